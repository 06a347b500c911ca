// SPDX-License-Identifier: MIT
/*
 * The Vulkan backend.  Uses dxm's public API only; the driver loop, the
 * locking and the work in flight are the shared driver's
 * (backends/common/dxm_driver.c, which says the locking rules): what is
 * here is Vulkan's part of it, struct dxm_drv_ops.
 *
 * Work in flight: every submission signals the next value of one
 * timeline semaphore on the one queue, its fence (the queue completes in
 * order), and a wait is vkWaitSemaphores on it.  The queue and the
 * command and descriptor pools are used under the driver's lock only.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vulkan/vulkan.h>

#include "dxm_driver.h"
#include "dxm_vk.h"

#define why(o, ...) dxm_drv_why((o)->why, (o)->why_len, __VA_ARGS__)

/* An imported device view (or, unmanaged, a program's buffer). */
struct import {
	struct dxm_drv_import im;
	VkDeviceMemory mem;
	VkBuffer buf;
};

struct work {
	struct dxm_drv_work w; /* w.value: the timeline value it signals */
	VkCommandBuffer cmd;
	VkDescriptorSet set;
};

struct dxm_vk_kernel {
	struct dxm_vk *vk;
	VkShaderModule module;
	VkPipelineLayout layout;
	VkPipeline pipeline;
	uint32_t push_size;
};

struct dxm_vk {
	struct dxm_drv drv; /* first: the owner dxm sees */
	VkInstance instance;
	VkPhysicalDevice phys;
	VkDevice dev;
	VkQueue queue;
	uint32_t qfamily;
	VkDeviceSize import_align;
	uint32_t mem_types; /* HOST_COHERENT memory types, preferred */
	PFN_vkGetMemoryHostPointerPropertiesEXT host_ptr_props;
	VkSemaphore timeline;
	VkDescriptorSetLayout set_layout;
	VkCommandPool cmd_pool;
	VkDescriptorPool desc_pool;
};

/* The driver's structs come first in ours. */
_Static_assert(offsetof(struct dxm_vk, drv) == 0, "drv first");
_Static_assert(offsetof(struct import, im) == 0, "im first");
_Static_assert(offsetof(struct work, w) == 0, "w first");
#define VK(d) ((struct dxm_vk *)(d))

/* The name of a VkResult, for the messages of opts->why. */
static const char *vk_str(VkResult r)
{
	switch (r) {
	case VK_SUCCESS:
		return "VK_SUCCESS";
	case VK_ERROR_OUT_OF_HOST_MEMORY:
		return "VK_ERROR_OUT_OF_HOST_MEMORY";
	case VK_ERROR_OUT_OF_DEVICE_MEMORY:
		return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
	case VK_ERROR_INITIALIZATION_FAILED:
		return "VK_ERROR_INITIALIZATION_FAILED";
	case VK_ERROR_DEVICE_LOST:
		return "VK_ERROR_DEVICE_LOST";
	case VK_ERROR_LAYER_NOT_PRESENT:
		return "VK_ERROR_LAYER_NOT_PRESENT";
	case VK_ERROR_EXTENSION_NOT_PRESENT:
		return "VK_ERROR_EXTENSION_NOT_PRESENT";
	case VK_ERROR_FEATURE_NOT_PRESENT:
		return "VK_ERROR_FEATURE_NOT_PRESENT";
	case VK_ERROR_INCOMPATIBLE_DRIVER:
		return "VK_ERROR_INCOMPATIBLE_DRIVER";
	default:
		return "VkResult";
	}
}

static int vk_err(VkResult r)
{
	switch (r) {
	case VK_SUCCESS:
		return 0;
	case VK_TIMEOUT:
	case VK_NOT_READY:
		return -ETIMEDOUT;
	case VK_ERROR_OUT_OF_HOST_MEMORY:
	case VK_ERROR_OUT_OF_DEVICE_MEMORY:
		return -ENOMEM;
	case VK_ERROR_DEVICE_LOST:
		return -ENODEV;
	case VK_ERROR_INVALID_EXTERNAL_HANDLE:
		return -EINVAL;
	default:
		return -EIO;
	}
}

/* ------------------------------------------------------------- device */

static bool has_ext(VkPhysicalDevice p, const char *name)
{
	uint32_t n = 0;
	vkEnumerateDeviceExtensionProperties(p, NULL, &n, NULL);
	VkExtensionProperties *e = calloc(n ? n : 1, sizeof(*e));
	if (!e)
		return false;
	vkEnumerateDeviceExtensionProperties(p, NULL, &n, e);
	bool found = false;
	for (uint32_t i = 0; i < n && !found; i++)
		found = !strcmp(e[i].extensionName, name);
	free(e);
	return found;
}

static bool has_timeline(VkPhysicalDevice p)
{
	VkPhysicalDeviceTimelineSemaphoreFeatures tl = {
		.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_TIMELINE_SEMAPHORE_FEATURES,
	};
	VkPhysicalDeviceFeatures2 f = {
		.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2,
		.pNext = &tl,
	};
	vkGetPhysicalDeviceFeatures2(p, &f);
	return tl.timelineSemaphore;
}

static int compute_family(VkPhysicalDevice p)
{
	uint32_t n = 0;
	vkGetPhysicalDeviceQueueFamilyProperties(p, &n, NULL);
	VkQueueFamilyProperties q[16];
	if (n > 16)
		n = 16;
	vkGetPhysicalDeviceQueueFamilyProperties(p, &n, q);
	for (uint32_t i = 0; i < n; i++)
		if (q[i].queueFlags & VK_QUEUE_COMPUTE_BIT)
			return (int)i;
	return -1;
}

/* What device p lacks that dxm_vk needs, or NULL. */
static const char *unfit(VkPhysicalDevice p,
			 const VkPhysicalDeviceProperties *pr)
{
	if (!has_ext(p, VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME))
		return "no " VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME;
	if (pr->apiVersion < VK_API_VERSION_1_2)
		return "Vulkan older than 1.2";
	if (!has_timeline(p))
		return "no timeline semaphores";
	if (compute_family(p) < 0)
		return "no compute queue";
	return NULL;
}

static int pick_device(struct dxm_vk *vk, const struct dxm_vk_opts *o)
{
	uint32_t n = 0;
	VkResult r = vkEnumeratePhysicalDevices(vk->instance, &n, NULL);
	if (r != VK_SUCCESS || !n) {
		why(o, "no Vulkan device (vkEnumeratePhysicalDevices: %d "
		       "devices, %s %d)",
		    (int)n, vk_str(r), (int)r);
		return -ENODEV;
	}
	VkPhysicalDevice *p = calloc(n, sizeof(*p));
	if (!p)
		return -ENOMEM;
	vkEnumeratePhysicalDevices(vk->instance, &n, p);
	int want = o && o->device > 0 ? o->device : 0, k = 0;
	char seen[384] = "";
	for (uint32_t i = 0; i < n; i++) {
		VkPhysicalDeviceProperties pr;
		vkGetPhysicalDeviceProperties(p[i], &pr);
		const char *lacks = unfit(p[i], &pr);
		size_t l = strlen(seen);
		snprintf(seen + l, sizeof(seen) - l, "%s%s%s%s", l ? ", " : "",
			 pr.deviceName, lacks ? ": " : "", lacks ? lacks : "");
		if (lacks)
			continue;
		if (k++ != want)
			continue;
		vk->phys = p[i];
		vk->qfamily = (uint32_t)compute_family(p[i]);
		snprintf(vk->drv.name, sizeof(vk->drv.name), "%s",
			 pr.deviceName);
		break;
	}
	free(p);
	if (!vk->phys && k) {
		why(o, "no device at index %d: %d Vulkan device(s) with "
		       "what dxm_vk needs (found: %s)",
		    want, k, seen);
		return -ENODEV;
	}
	if (!vk->phys) {
		why(o, "no Vulkan device with " VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME
		       ", timeline semaphores and a compute queue "
		       "(Vulkan 1.2) (found: %s)",
		    seen);
		return -ENODEV;
	}
	return 0;
}

static int make_device(struct dxm_vk *vk, const struct dxm_vk_opts *o)
{
	float prio = 1.0f;
	VkDeviceQueueCreateInfo q = {
		.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
		.queueFamilyIndex = vk->qfamily,
		.queueCount = 1,
		.pQueuePriorities = &prio,
	};
	VkPhysicalDeviceTimelineSemaphoreFeatures tl = {
		.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_TIMELINE_SEMAPHORE_FEATURES,
		.timelineSemaphore = VK_TRUE,
	};
	const char *ext[] = { VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME };
	VkDeviceCreateInfo ci = {
		.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
		.pNext = &tl,
		.queueCreateInfoCount = 1,
		.pQueueCreateInfos = &q,
		.enabledExtensionCount = 1,
		.ppEnabledExtensionNames = ext,
	};
	VkResult r = vkCreateDevice(vk->phys, &ci, NULL, &vk->dev);
	if (r != VK_SUCCESS) {
		why(o, "vkCreateDevice(%s): %s %d", vk->drv.name, vk_str(r),
		    (int)r);
		return vk_err(r);
	}
	vkGetDeviceQueue(vk->dev, vk->qfamily, 0, &vk->queue);
	vk->host_ptr_props = (PFN_vkGetMemoryHostPointerPropertiesEXT)
		vkGetDeviceProcAddr(vk->dev,
				    "vkGetMemoryHostPointerPropertiesEXT");
	VkPhysicalDeviceExternalMemoryHostPropertiesEXT hp = {
		.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_MEMORY_HOST_PROPERTIES_EXT,
	};
	VkPhysicalDeviceProperties2 p2 = {
		.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
		.pNext = &hp,
	};
	vkGetPhysicalDeviceProperties2(vk->phys, &p2);
	vk->import_align = hp.minImportedHostPointerAlignment;
	if (!vk->host_ptr_props) {
		why(o, "%s has no vkGetMemoryHostPointerPropertiesEXT",
		    vk->drv.name);
		return -ENODEV;
	}
	if (vk->import_align > vk->drv.psize) {
		why(o, "%s imports host memory at %llu-byte alignment, more "
		       "than a page",
		    vk->drv.name, (unsigned long long)vk->import_align);
		return -ENODEV;
	}
	VkPhysicalDeviceMemoryProperties mp;
	vkGetPhysicalDeviceMemoryProperties(vk->phys, &mp);
	for (uint32_t i = 0; i < mp.memoryTypeCount; i++)
		if (mp.memoryTypes[i].propertyFlags &
		    VK_MEMORY_PROPERTY_HOST_COHERENT_BIT)
			vk->mem_types |= 1u << i;

	VkSemaphoreTypeCreateInfo st = {
		.sType = VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO,
		.semaphoreType = VK_SEMAPHORE_TYPE_TIMELINE,
		.initialValue = 0,
	};
	VkSemaphoreCreateInfo sci = {
		.sType = VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO,
		.pNext = &st,
	};
	VkDescriptorSetLayoutBinding b = {
		.binding = 0,
		.descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
		.descriptorCount = 1,
		.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT,
	};
	VkDescriptorSetLayoutCreateInfo dl = {
		.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
		.bindingCount = 1,
		.pBindings = &b,
	};
	VkCommandPoolCreateInfo cp = {
		.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
		.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
		.queueFamilyIndex = vk->qfamily,
	};
	VkDescriptorPoolSize ps = { VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, 1024 };
	VkDescriptorPoolCreateInfo dp = {
		.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
		.flags = VK_DESCRIPTOR_POOL_CREATE_FREE_DESCRIPTOR_SET_BIT,
		.maxSets = 1024,
		.poolSizeCount = 1,
		.pPoolSizes = &ps,
	};
	if ((r = vkCreateSemaphore(vk->dev, &sci, NULL, &vk->timeline)) ||
	    (r = vkCreateDescriptorSetLayout(vk->dev, &dl, NULL,
					     &vk->set_layout)) ||
	    (r = vkCreateCommandPool(vk->dev, &cp, NULL, &vk->cmd_pool)) ||
	    (r = vkCreateDescriptorPool(vk->dev, &dp, NULL, &vk->desc_pool))) {
		why(o, "setting up %s: %s %d", vk->drv.name, vk_str(r), (int)r);
		return vk_err(r);
	}
	return 0;
}

/* ---------------------------------------------- the driver's Vulkan ops */

static int vk_import(struct dxm_drv *d, struct dxm_drv_import *dim)
{
	struct dxm_vk *vk = VK(d);
	struct import *im = (struct import *)dim;
	VkMemoryHostPointerPropertiesEXT hp = {
		.sType = VK_STRUCTURE_TYPE_MEMORY_HOST_POINTER_PROPERTIES_EXT,
	};
	VkResult r = vk->host_ptr_props(
		vk->dev, VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT,
		dim->base, &hp);
	if (r)
		return vk_err(r);
	uint32_t bits = hp.memoryTypeBits & vk->mem_types;
	if (!bits)
		bits = hp.memoryTypeBits;
	if (!bits)
		return -EINVAL;
	VkImportMemoryHostPointerInfoEXT ih = {
		.sType = VK_STRUCTURE_TYPE_IMPORT_MEMORY_HOST_POINTER_INFO_EXT,
		.handleType =
			VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT,
		.pHostPointer = dim->base,
	};
	VkMemoryAllocateInfo ai = {
		.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
		.pNext = &ih,
		.allocationSize = dim->len,
		.memoryTypeIndex = (uint32_t)__builtin_ctz(bits),
	};
	VkExternalMemoryBufferCreateInfo eb = {
		.sType = VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_BUFFER_CREATE_INFO,
		.handleTypes =
			VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT,
	};
	VkBufferCreateInfo bi = {
		.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
		.pNext = &eb,
		.size = dim->len,
		.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT,
		.sharingMode = VK_SHARING_MODE_EXCLUSIVE,
	};
	r = vkAllocateMemory(vk->dev, &ai, NULL, &im->mem);
	if (!r)
		r = vkCreateBuffer(vk->dev, &bi, NULL, &im->buf);
	if (!r)
		r = vkBindBufferMemory(vk->dev, im->buf, im->mem, 0);
	if (r) {
		if (im->buf)
			vkDestroyBuffer(vk->dev, im->buf, NULL);
		if (im->mem)
			vkFreeMemory(vk->dev, im->mem, NULL);
		return vk_err(r);
	}
	return 0;
}

static void vk_unimport(struct dxm_drv *d, struct dxm_drv_import *dim)
{
	struct import *im = (struct import *)dim;
	vkDestroyBuffer(VK(d)->dev, im->buf, NULL);
	vkFreeMemory(VK(d)->dev, im->mem, NULL);
}

/* Record and submit k over buf[off, off+len), signalling w->value. */
static int vk_launch(struct dxm_drv *d, void *kernel,
		     struct dxm_drv_import *dim, size_t off, size_t len,
		     const void *push, const uint32_t groups[3],
		     struct dxm_drv_work *dw)
{
	struct dxm_vk *vk = VK(d);
	struct dxm_vk_kernel *k = kernel;
	struct work *w = (struct work *)dw;
	VkBuffer buf = ((struct import *)dim)->buf;
	VkCommandBufferAllocateInfo ca = {
		.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
		.commandPool = vk->cmd_pool,
		.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
		.commandBufferCount = 1,
	};
	VkDescriptorSetAllocateInfo da = {
		.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
		.descriptorPool = vk->desc_pool,
		.descriptorSetCount = 1,
		.pSetLayouts = &vk->set_layout,
	};
	VkResult r = vkAllocateCommandBuffers(vk->dev, &ca, &w->cmd);
	if (r)
		return vk_err(r);
	r = vkAllocateDescriptorSets(vk->dev, &da, &w->set);
	if (r) {
		vkFreeCommandBuffers(vk->dev, vk->cmd_pool, 1, &w->cmd);
		return vk_err(r);
	}
	VkDescriptorBufferInfo dbi = { buf, off, len };
	VkWriteDescriptorSet wr = {
		.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
		.dstSet = w->set,
		.dstBinding = 0,
		.descriptorCount = 1,
		.descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
		.pBufferInfo = &dbi,
	};
	vkUpdateDescriptorSets(vk->dev, 1, &wr, 0, NULL);
	VkCommandBufferBeginInfo bi = {
		.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
		.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,
	};
	vkBeginCommandBuffer(w->cmd, &bi);
	/* Earlier work on the queue and the host's writes before the
	 * submission come first. */
	VkMemoryBarrier in = {
		.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
		.srcAccessMask =
			VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_HOST_WRITE_BIT,
		.dstAccessMask =
			VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT,
	};
	vkCmdPipelineBarrier(w->cmd,
			     VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT |
				     VK_PIPELINE_STAGE_HOST_BIT,
			     VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, 0, 1, &in, 0,
			     NULL, 0, NULL);
	vkCmdBindPipeline(w->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, k->pipeline);
	vkCmdBindDescriptorSets(w->cmd, VK_PIPELINE_BIND_POINT_COMPUTE,
				k->layout, 0, 1, &w->set, 0, NULL);
	if (k->push_size)
		vkCmdPushConstants(w->cmd, k->layout,
				   VK_SHADER_STAGE_COMPUTE_BIT, 0, k->push_size,
				   push);
	vkCmdDispatch(w->cmd, groups[0], groups[1], groups[2]);
	/* Compute to host: the device's writes are visible to the CPU once
	 * the timeline value is reached. */
	VkMemoryBarrier out = {
		.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
		.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT,
		.dstAccessMask =
			VK_ACCESS_HOST_READ_BIT | VK_ACCESS_HOST_WRITE_BIT,
	};
	vkCmdPipelineBarrier(w->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
			     VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &out, 0, NULL, 0,
			     NULL);
	r = vkEndCommandBuffer(w->cmd);
	VkTimelineSemaphoreSubmitInfo ts = {
		.sType = VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO,
		.signalSemaphoreValueCount = 1,
		.pSignalSemaphoreValues = &w->w.value,
	};
	VkSubmitInfo si = {
		.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
		.pNext = &ts,
		.commandBufferCount = 1,
		.pCommandBuffers = &w->cmd,
		.signalSemaphoreCount = 1,
		.pSignalSemaphores = &vk->timeline,
	};
	if (!r)
		r = vkQueueSubmit(vk->queue, 1, &si, VK_NULL_HANDLE);
	if (r) {
		if (r == VK_ERROR_DEVICE_LOST)
			d->st.lost = true;
		vkFreeCommandBuffers(vk->dev, vk->cmd_pool, 1, &w->cmd);
		vkFreeDescriptorSets(vk->dev, vk->desc_pool, 1, &w->set);
		return vk_err(r);
	}
	return 0;
}

static int vk_done(struct dxm_drv *d, struct dxm_drv_work *w)
{
	uint64_t v = 0;
	VkResult r =
		vkGetSemaphoreCounterValue(VK(d)->dev, VK(d)->timeline, &v);
	if (r == VK_ERROR_DEVICE_LOST)
		return -ENODEV;
	return v >= w->value;
}

static void vk_work_fini(struct dxm_drv *d, struct dxm_drv_work *dw)
{
	struct dxm_vk *vk = VK(d);
	struct work *w = (struct work *)dw;
	vkFreeCommandBuffers(vk->dev, vk->cmd_pool, 1, &w->cmd);
	vkFreeDescriptorSets(vk->dev, vk->desc_pool, 1, &w->set);
}

static int vk_wait(struct dxm_drv *d, uint64_t value, uint64_t timeout_ns)
{
	VkSemaphoreWaitInfo wi = {
		.sType = VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO,
		.semaphoreCount = 1,
		.pSemaphores = &VK(d)->timeline,
		.pValues = &value,
	};
	VkResult r = vkWaitSemaphores(VK(d)->dev, &wi, timeout_ns);
	if (r == VK_SUCCESS)
		return 0;
	return r == VK_TIMEOUT ? -ETIMEDOUT : -ENODEV;
}

static void vk_idle(struct dxm_drv *d)
{
	if (VK(d)->dev)
		vkDeviceWaitIdle(VK(d)->dev);
}

static const struct dxm_drv_ops vk_ops = {
	.prefix = "dxm_vk",
	.import_size = sizeof(struct import),
	.work_size = sizeof(struct work),
	.refuse_holes = false,
	.use = NULL,
	.import = vk_import,
	.unimport = vk_unimport,
	.launch = vk_launch,
	.done = vk_done,
	.work_fini = vk_work_fini,
	.wait = vk_wait,
	.idle = vk_idle,
};

/* -------------------------------------------------------- create, destroy */

int dxm_vk_create(struct dxm_ctx *ctx, const struct dxm_vk_opts *opts,
		  struct dxm_vk **vkp)
{
	if (!ctx || !vkp || (opts && opts->sz < sizeof(size_t)))
		return -EINVAL;
	struct dxm_vk_opts o = { .sz = sizeof(o), .device = -1 };
	if (opts)
		memcpy(&o, opts, opts->sz < sizeof(o) ? opts->sz : sizeof(o));
	struct dxm_vk *vk = calloc(1, sizeof(*vk));
	if (!vk)
		return -ENOMEM;
	dxm_drv_init(&vk->drv, &vk_ops, ctx, o.timeout_ms);
	VkApplicationInfo app = {
		.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
		.pApplicationName = "dxm",
		.apiVersion = VK_API_VERSION_1_2,
	};
	VkInstanceCreateInfo ici = {
		.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
		.pApplicationInfo = &app,
	};
	VkResult r = vkCreateInstance(&ici, NULL, &vk->instance);
	int err;
	if (r != VK_SUCCESS) {
		why(&o, "no Vulkan driver (vkCreateInstance: %s %d; Mesa's "
			"lavapipe, a CPU device, is in mesa-vulkan-drivers)",
		    vk_str(r), (int)r);
		vk->instance = VK_NULL_HANDLE;
		err = -ENODEV;
		goto fail;
	}
	err = pick_device(vk, &o);
	if (!err)
		err = make_device(vk, &o);
	if (!err)
		err = dxm_drv_start(&vk->drv);
	if (err)
		goto fail;
	*vkp = vk;
	return 0;
fail:
	dxm_vk_destroy(vk);
	return err;
}

void dxm_vk_destroy(struct dxm_vk *vk)
{
	if (!vk)
		return;
	dxm_drv_fini(&vk->drv); /* waits for the device */
	if (vk->dev) {
		vkDestroyDescriptorPool(vk->dev, vk->desc_pool, NULL);
		vkDestroyCommandPool(vk->dev, vk->cmd_pool, NULL);
		vkDestroyDescriptorSetLayout(vk->dev, vk->set_layout, NULL);
		vkDestroySemaphore(vk->dev, vk->timeline, NULL);
		vkDestroyDevice(vk->dev, NULL);
	}
	if (vk->instance)
		vkDestroyInstance(vk->instance, NULL);
	free(vk);
}

const char *dxm_vk_device_name(const struct dxm_vk *vk)
{
	return vk ? vk->drv.name : "";
}

/* --------------------------------------------------------------- kernels */

int dxm_vk_kernel_create(struct dxm_vk *vk, const uint32_t *spirv,
			 size_t size, uint32_t push_size,
			 struct dxm_vk_kernel **kp)
{
	if (!vk || !spirv || !size || (size & 3) || !kp || (push_size & 3) ||
	    push_size > 128)
		return -EINVAL;
	struct dxm_vk_kernel *k = calloc(1, sizeof(*k));
	if (!k)
		return -ENOMEM;
	k->vk = vk;
	k->push_size = push_size;
	VkShaderModuleCreateInfo sm = {
		.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
		.codeSize = size,
		.pCode = spirv,
	};
	VkPushConstantRange pr = { VK_SHADER_STAGE_COMPUTE_BIT, 0, push_size };
	VkPipelineLayoutCreateInfo pl = {
		.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
		.setLayoutCount = 1,
		.pSetLayouts = &vk->set_layout,
		.pushConstantRangeCount = push_size ? 1 : 0,
		.pPushConstantRanges = &pr,
	};
	VkResult r = vkCreateShaderModule(vk->dev, &sm, NULL, &k->module);
	if (!r)
		r = vkCreatePipelineLayout(vk->dev, &pl, NULL, &k->layout);
	if (!r) {
		VkComputePipelineCreateInfo ci = {
			.sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
			.stage = {
				.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
				.stage = VK_SHADER_STAGE_COMPUTE_BIT,
				.module = k->module,
				.pName = "main",
			},
			.layout = k->layout,
		};
		r = vkCreateComputePipelines(vk->dev, VK_NULL_HANDLE, 1, &ci,
					     NULL, &k->pipeline);
	}
	if (r) {
		dxm_vk_kernel_destroy(k);
		return vk_err(r);
	}
	*kp = k;
	return 0;
}

void dxm_vk_kernel_destroy(struct dxm_vk_kernel *k)
{
	if (!k)
		return;
	VkDevice d = k->vk->dev;
	vkDeviceWaitIdle(d); /* no work in flight uses the pipeline */
	vkDestroyPipeline(d, k->pipeline, NULL);
	vkDestroyPipelineLayout(d, k->layout, NULL);
	vkDestroyShaderModule(d, k->module, NULL);
	free(k);
}

/* ------------------------------------------------------------- dispatch */

int dxm_vk_dispatch(struct dxm_vk *vk, struct dxm_vk_kernel *k, void *addr,
		    size_t len, const void *push, const uint32_t groups[3],
		    unsigned flags, uint64_t *ticket)
{
	if (!vk || !k || k->vk != vk || (k->push_size && !push) ||
	    (flags & ~DXM_VK_UNMANAGED))
		return -EINVAL;
	return dxm_drv_dispatch(&vk->drv, k, addr, len, push, groups,
				flags & DXM_VK_UNMANAGED, ticket);
}

int dxm_vk_wait(struct dxm_vk *vk, uint64_t ticket, uint64_t timeout_ns)
{
	if (!vk)
		return -EINVAL;
	return dxm_drv_wait(&vk->drv, ticket, timeout_ns);
}

int dxm_vk_done(struct dxm_vk *vk, uint64_t ticket)
{
	if (!vk)
		return -EINVAL;
	return dxm_drv_done(&vk->drv, ticket);
}

void dxm_vk_get_stats(struct dxm_vk *vk, struct dxm_vk_stats *st)
{
	struct dxm_drv_stats s;
	dxm_drv_get_stats(&vk->drv, &s);
	DXM_DRV_STATS_COPY(st, &s);
}
