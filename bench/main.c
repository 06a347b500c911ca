// SPDX-License-Identifier: MIT
/* Standalone driver for the benchmark (`dxm bench` calls bench_main too). */
#include "bench.h"

int main(int argc, char **argv)
{
	return bench_main(argc, argv);
}
