// SPDX-License-Identifier: MIT
//
// The work of a device without PCIe AtomicOps: each invocation does, iters
// times, a read-modify-write of its own 32-bit counter as two bus
// transactions, a load and a store (volatile: every one reaches memory).
// Against a CPU that increments the same counters atomically, an update
// that lands between the load and the store is lost, unless the device
// holds the page exclusive while it works.
#version 450

layout(local_size_x = 64) in;

layout(std430, binding = 0) volatile buffer Counters {
	uint c[];
};

layout(push_constant) uniform Args {
	uint count;  // counters
	uint stride; // 32-bit words between two counters
	uint iters;  // increments per counter
	uint delta;  // what each increment adds
};

void main()
{
	uint i = gl_GlobalInvocationID.x;
	if (i >= count)
		return;
	uint w = i * stride;
	// iters must stay below 65535: lavapipe (llvmpipe) ends an
	// invocation's loops after that many iterations (its guard against
	// endless shaders).  Longer work takes more counters.
	for (uint k = 0; k < iters; k++) {
		uint v = c[w];
		c[w] = v + delta;
	}
}
