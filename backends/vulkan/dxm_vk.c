// SPDX-License-Identifier: MIT
/*
 * The Vulkan backend.  Uses dxm's public API only.
 *
 * Locking: vk->lock is the driver's lock of the notifier protocol and
 * protects everything below it in struct dxm_vk (imports, work in
 * flight, the command and descriptor pools, the queue).  The notifier
 * callbacks take it to call dxm_notifier_set_seq() and to collect the
 * work in flight on their range, and wait for that work after dropping
 * it.  dxm calls (make_exclusive, exclusive_unlock, notifier insert and
 * remove) are made without it, as nouveau does.
 *
 * Work in flight: every submission signals the next value of one
 * timeline semaphore on the one queue, and remembers the CPU range it
 * holds.  An invalidation waits for the highest value among the
 * submissions that overlap its range (the queue completes in order).
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <vulkan/vulkan.h>

#include "dxm_vk.h"

#define DEFAULT_TIMEOUT_MS 10000
#define BUSY_TIMEOUT_NS (10ull * 1000000000ull)

/* An imported device view (or, unmanaged, a program's buffer). */
struct import {
	void *base;
	size_t len;
	VkDeviceMemory mem;
	VkBuffer buf;
	uintptr_t cpu_lo, cpu_hi; /* CPU addresses dispatched through it */
	bool dead;		  /* its region is being unmapped */
	struct import *next;
};

struct work {
	uint64_t value; /* timeline value it signals */
	uintptr_t start, end;
	VkCommandBuffer cmd;
	VkDescriptorSet set;
	struct import *own; /* unmanaged: freed with the work */
	struct work *next;
};

struct dxm_vk_kernel {
	struct dxm_vk *vk;
	VkShaderModule module;
	VkPipelineLayout layout;
	VkPipeline pipeline;
	uint32_t push_size;
};

struct dxm_vk {
	struct dxm_ctx *ctx;
	size_t psize;
	uint64_t timeout_ns;
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
	char name[VK_MAX_PHYSICAL_DEVICE_NAME_SIZE];
	struct dxm_notifier *all;

	pthread_mutex_t lock;
	VkCommandPool cmd_pool;
	VkDescriptorPool desc_pool;
	struct import *imports;
	struct work *inflight; /* oldest first */
	uint64_t next_value;
	struct dxm_vk_stats st;
};

static void why(const struct dxm_vk_opts *o, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void why(const struct dxm_vk_opts *o, const char *fmt, ...)
{
	if (!o || !o->why || !o->why_len)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(o->why, o->why_len, fmt, ap);
	va_end(ap);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

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
		snprintf(vk->name, sizeof(vk->name), "%s", pr.deviceName);
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
		why(o, "vkCreateDevice(%s): %s %d", vk->name, vk_str(r),
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
		    vk->name);
		return -ENODEV;
	}
	if (vk->import_align > vk->psize) {
		why(o, "%s imports host memory at %llu-byte alignment, more "
		       "than a page",
		    vk->name, (unsigned long long)vk->import_align);
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
		why(o, "setting up %s: %s %d", vk->name, vk_str(r), (int)r);
		return vk_err(r);
	}
	return 0;
}

/* ------------------------------------------------------ work in flight */

/* Free the work the device has finished (vk->lock held). */
static void retire(struct dxm_vk *vk)
{
	uint64_t done = 0;
	if (vk->st.lost)
		done = UINT64_MAX; /* nothing will run any more */
	else if (vkGetSemaphoreCounterValue(vk->dev, vk->timeline, &done) ==
		 VK_ERROR_DEVICE_LOST)
		vk->st.lost = true, done = UINT64_MAX;
	while (vk->inflight && vk->inflight->value <= done) {
		struct work *w = vk->inflight;
		vk->inflight = w->next;
		vkFreeCommandBuffers(vk->dev, vk->cmd_pool, 1, &w->cmd);
		vkFreeDescriptorSets(vk->dev, vk->desc_pool, 1, &w->set);
		if (w->own) {
			vkDestroyBuffer(vk->dev, w->own->buf, NULL);
			vkFreeMemory(vk->dev, w->own->mem, NULL);
			free(w->own);
		}
		free(w);
	}
}

/* Wait (no lock held) until the timeline reaches value; a device that
 * does not get there in time, or reports itself lost, is lost. */
static int wait_value(struct dxm_vk *vk, uint64_t value, uint64_t timeout_ns,
		      bool lose)
{
	VkSemaphoreWaitInfo wi = {
		.sType = VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO,
		.semaphoreCount = 1,
		.pSemaphores = &vk->timeline,
		.pValues = &value,
	};
	VkResult r = vkWaitSemaphores(vk->dev, &wi, timeout_ns);
	if (r == VK_SUCCESS)
		return 0;
	if (r == VK_TIMEOUT && !lose)
		return -ETIMEDOUT;
	pthread_mutex_lock(&vk->lock);
	if (!vk->st.lost)
		fprintf(stderr,
			"dxm_vk: %s %s; the device is declared lost, its "
			"pages given back to the CPU\n",
			vk->name,
			r == VK_TIMEOUT ? "did not finish its work in time"
					: "was lost");
	vk->st.lost = true;
	pthread_mutex_unlock(&vk->lock);
	return -ENODEV;
}

/* ------------------------------------------------------------ notifiers */

static bool own_conversion(struct dxm_vk *vk, const struct dxm_range *r)
{
	/* Ignore our own conversions, or the retry loop livelocks (B3). */
	return r->event == DXM_EVENT_EXCLUSIVE && r->owner == vk;
}

/*
 * Every invalidation: set the sequence under the lock, note the newest
 * work in flight on the range, and wait for it outside the lock.  Only
 * then may the CPU have the pages back.  An UNMAP also drops the imports
 * used for the range (the device view goes with the region).
 */
static bool invalidate_all(struct dxm_notifier *n, const struct dxm_range *r,
			   unsigned long cur_seq)
{
	struct dxm_vk *vk = dxm_notifier_priv(n);
	if (own_conversion(vk, r))
		return true;
	uintptr_t s = (uintptr_t)r->start, e = (uintptr_t)r->end;
	uint64_t value = 0;
	pthread_mutex_lock(&vk->lock);
	dxm_notifier_set_seq(n, cur_seq);
	retire(vk);
	for (struct work *w = vk->inflight; w; w = w->next)
		if (w->start < e && s < w->end && w->value > value)
			value = w->value;
	bool lost = vk->st.lost;
	pthread_mutex_unlock(&vk->lock);
	if (value && !lost) {
		uint64_t t0 = now_ns();
		wait_value(vk, value, vk->timeout_ns, true);
		pthread_mutex_lock(&vk->lock);
		vk->st.invalidations++;
		vk->st.invalidate_wait_ns += now_ns() - t0;
		pthread_mutex_unlock(&vk->lock);
	}
	if (r->event == DXM_EVENT_UNMAP || r->event == DXM_EVENT_REMAP) {
		pthread_mutex_lock(&vk->lock);
		for (struct import *im = vk->imports; im; im = im->next)
			if (im->cpu_lo < e && s < im->cpu_hi)
				im->dead = true;
		pthread_mutex_unlock(&vk->lock);
	}
	return true;
}

/* The per-dispatch notifier of the sequence protocol. */
static bool invalidate_op(struct dxm_notifier *n, const struct dxm_range *r,
			  unsigned long cur_seq)
{
	struct dxm_vk *vk = dxm_notifier_priv(n);
	if (own_conversion(vk, r))
		return true;
	pthread_mutex_lock(&vk->lock);
	dxm_notifier_set_seq(n, cur_seq);
	pthread_mutex_unlock(&vk->lock);
	return true;
}

static const struct dxm_notifier_ops all_ops = { .invalidate = invalidate_all };
static const struct dxm_notifier_ops op_ops = { .invalidate = invalidate_op };

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
	vk->ctx = ctx;
	vk->psize = (size_t)sysconf(_SC_PAGESIZE);
	vk->timeout_ns = (uint64_t)(o.timeout_ms ? o.timeout_ms
						  : DEFAULT_TIMEOUT_MS) *
			 1000000ull;
	pthread_mutex_init(&vk->lock, NULL);
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
	/* The whole user address space: every invalidation reaches us. */
	if (!err)
		err = dxm_notifier_insert(ctx, (void *)vk->psize,
					  ((size_t)1 << 47) - vk->psize,
					  &all_ops, vk, &vk->all);
	if (err)
		goto fail;
	*vkp = vk;
	return 0;
fail:
	dxm_vk_destroy(vk);
	return err;
}

static void drop_import(struct dxm_vk *vk, struct import *im)
{
	vkDestroyBuffer(vk->dev, im->buf, NULL);
	vkFreeMemory(vk->dev, im->mem, NULL);
	free(im);
}

void dxm_vk_destroy(struct dxm_vk *vk)
{
	if (!vk)
		return;
	if (vk->dev) {
		/* All work done before the notifier goes: a CPU access to a
		 * page still held must find nothing in flight. */
		vkDeviceWaitIdle(vk->dev);
		pthread_mutex_lock(&vk->lock);
		vk->st.lost = true; /* retire everything */
		retire(vk);
		pthread_mutex_unlock(&vk->lock);
	}
	if (vk->all)
		dxm_notifier_remove(vk->all);
	if (vk->dev) {
		while (vk->imports) {
			struct import *im = vk->imports;
			vk->imports = im->next;
			drop_import(vk, im);
		}
		vkDestroyDescriptorPool(vk->dev, vk->desc_pool, NULL);
		vkDestroyCommandPool(vk->dev, vk->cmd_pool, NULL);
		vkDestroyDescriptorSetLayout(vk->dev, vk->set_layout, NULL);
		vkDestroySemaphore(vk->dev, vk->timeline, NULL);
		vkDestroyDevice(vk->dev, NULL);
	}
	if (vk->instance)
		vkDestroyInstance(vk->instance, NULL);
	pthread_mutex_destroy(&vk->lock);
	free(vk);
}

const char *dxm_vk_device_name(const struct dxm_vk *vk)
{
	return vk ? vk->name : "";
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

/* -------------------------------------------------------------- imports */

static int import_host(struct dxm_vk *vk, void *base, size_t len,
		       struct import **imp)
{
	VkMemoryHostPointerPropertiesEXT hp = {
		.sType = VK_STRUCTURE_TYPE_MEMORY_HOST_POINTER_PROPERTIES_EXT,
	};
	VkResult r = vk->host_ptr_props(
		vk->dev,
		VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT, base,
		&hp);
	if (r)
		return vk_err(r);
	uint32_t bits = hp.memoryTypeBits & vk->mem_types;
	if (!bits)
		bits = hp.memoryTypeBits;
	if (!bits)
		return -EINVAL;
	struct import *im = calloc(1, sizeof(*im));
	if (!im)
		return -ENOMEM;
	im->base = base;
	im->len = len;
	VkImportMemoryHostPointerInfoEXT ih = {
		.sType = VK_STRUCTURE_TYPE_IMPORT_MEMORY_HOST_POINTER_INFO_EXT,
		.handleType =
			VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT,
		.pHostPointer = base,
	};
	VkMemoryAllocateInfo ai = {
		.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
		.pNext = &ih,
		.allocationSize = len,
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
		.size = len,
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
		free(im);
		return vk_err(r);
	}
	*imp = im;
	return 0;
}

/* The import of the device view based at base (vk->lock held): made once
 * per region, dropped once the region's CPU view is unmapped and nothing
 * in flight uses it. */
static int get_import(struct dxm_vk *vk, void *base, size_t len,
		      struct import **imp)
{
	for (struct import **pp = &vk->imports; *pp;) {
		struct import *im = *pp;
		if (im->dead) {
			bool used = false;
			for (struct work *w = vk->inflight; w && !used;
			     w = w->next)
				used = w->start < im->cpu_hi &&
				       im->cpu_lo < w->end;
			if (!used) {
				*pp = im->next;
				drop_import(vk, im);
				continue;
			}
		} else if (im->base == base && im->len == len) {
			*imp = im;
			return 0;
		}
		pp = &im->next;
	}
	int err = import_host(vk, base, len, imp);
	if (err)
		return err;
	(*imp)->cpu_lo = UINTPTR_MAX;
	(*imp)->next = vk->imports;
	vk->imports = *imp;
	vk->st.imports++;
	return 0;
}

/* ------------------------------------------------------------- dispatch */

/* Record and submit k over buf[off, off+len) (vk->lock held). */
static int submit(struct dxm_vk *vk, struct dxm_vk_kernel *k, VkBuffer buf,
		  size_t off, size_t len, const void *push,
		  const uint32_t groups[3], struct work *w)
{
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
		.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT |
				 VK_ACCESS_HOST_WRITE_BIT,
		.dstAccessMask = VK_ACCESS_SHADER_READ_BIT |
				 VK_ACCESS_SHADER_WRITE_BIT,
	};
	vkCmdPipelineBarrier(w->cmd,
			     VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT |
				     VK_PIPELINE_STAGE_HOST_BIT,
			     VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, 0, 1, &in,
			     0, NULL, 0, NULL);
	vkCmdBindPipeline(w->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, k->pipeline);
	vkCmdBindDescriptorSets(w->cmd, VK_PIPELINE_BIND_POINT_COMPUTE,
				k->layout, 0, 1, &w->set, 0, NULL);
	if (k->push_size)
		vkCmdPushConstants(w->cmd, k->layout,
				   VK_SHADER_STAGE_COMPUTE_BIT, 0,
				   k->push_size, push);
	vkCmdDispatch(w->cmd, groups[0], groups[1], groups[2]);
	/* Compute to host: the device's writes are visible to the CPU once
	 * the timeline value is reached. */
	VkMemoryBarrier out = {
		.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
		.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT,
		.dstAccessMask = VK_ACCESS_HOST_READ_BIT |
				 VK_ACCESS_HOST_WRITE_BIT,
	};
	vkCmdPipelineBarrier(w->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
			     VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &out, 0, NULL, 0,
			     NULL);
	r = vkEndCommandBuffer(w->cmd);
	w->value = vk->next_value + 1;
	VkTimelineSemaphoreSubmitInfo ts = {
		.sType = VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO,
		.signalSemaphoreValueCount = 1,
		.pSignalSemaphoreValues = &w->value,
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
			vk->st.lost = true;
		vkFreeCommandBuffers(vk->dev, vk->cmd_pool, 1, &w->cmd);
		vkFreeDescriptorSets(vk->dev, vk->desc_pool, 1, &w->set);
		return vk_err(r);
	}
	vk->next_value = w->value;
	vk->st.dispatches++;
	/* In submission order: the oldest first. */
	struct work **pp = &vk->inflight;
	while (*pp)
		pp = &(*pp)->next;
	w->next = NULL;
	*pp = w;
	return 0;
}

/* Ordinary host memory, no dxm: the device races with the CPU. */
static int dispatch_unmanaged(struct dxm_vk *vk, struct dxm_vk_kernel *k,
			      void *addr, size_t len, const void *push,
			      const uint32_t groups[3], uint64_t *ticket)
{
	struct work *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	pthread_mutex_lock(&vk->lock);
	int err = vk->st.lost ? -ENODEV : import_host(vk, addr, len, &w->own);
	if (!err)
		err = submit(vk, k, w->own->buf, 0, len, push, groups, w);
	if (!err && ticket)
		*ticket = w->value;
	if (err && w->own) {
		vkDestroyBuffer(vk->dev, w->own->buf, NULL);
		vkFreeMemory(vk->dev, w->own->mem, NULL);
		free(w->own);
	}
	pthread_mutex_unlock(&vk->lock);
	if (err)
		free(w);
	return err;
}

int dxm_vk_dispatch(struct dxm_vk *vk, struct dxm_vk_kernel *k, void *addr,
		    size_t len, const void *push, const uint32_t groups[3],
		    unsigned flags, uint64_t *ticket)
{
	if (!vk || !k || k->vk != vk || !addr || !len || !groups ||
	    ((uintptr_t)addr | len) & (vk->psize - 1) ||
	    (k->push_size && !push) || (flags & ~DXM_VK_UNMANAGED))
		return -EINVAL;
	if (flags & DXM_VK_UNMANAGED)
		return dispatch_unmanaged(vk, k, addr, len, push, groups,
					  ticket);
	size_t n = len / vk->psize;
	void **dev = malloc(n * sizeof(*dev));
	struct work *w = calloc(1, sizeof(*w));
	struct dxm_notifier *op = NULL;
	int err = dev && w ? 0 : -ENOMEM;
	if (!err)
		err = dxm_notifier_insert(vk->ctx, addr, len, &op_ops, vk, &op);
	uint64_t t0 = now_ns();
	unsigned us = 1;
	while (!err) {
		/* The device view, imported once, before any conversion. */
		struct dxm_device_view dv;
		err = dxm_device_view(vk->ctx, addr, 0, &dv, sizeof(dv));
		if (err)
			break;
		if (dv.psize && dv.psize != vk->psize) {
			/* Huge pages: dev[] has one entry per huge page,
			 * and no driver here was tried on them. */
			err = -EOPNOTSUPP;
			break;
		}
		unsigned long seq = dxm_notifier_read_begin(op);
		long got = dxm_make_exclusive(vk->ctx, addr, len, vk, dev);
		if (got < 0) {
			err = (int)got;
			break;
		}
		bool all = true;
		for (size_t i = 0; i < n && all; i++)
			all = dev[i] == (char *)dv.base + dv.offset +
						i * vk->psize;
		pthread_mutex_lock(&vk->lock);
		if (vk->st.lost) {
			err = -ENODEV;
		} else if (!all || dxm_notifier_read_retry(op, seq)) {
			/* A page busy (another device, the CPU taking it
			 * back), or an invalidation since read_begin. */
			if (all)
				vk->st.retries++;
			else
				vk->st.busy_retries++;
			pthread_mutex_unlock(&vk->lock);
			dxm_exclusive_unlock(vk->ctx, addr, len, dev);
			if (now_ns() - t0 > BUSY_TIMEOUT_NS) {
				err = -EBUSY;
				break;
			}
			usleep(us);
			us = us < 1000 ? us * 2 : us;
			continue;
		} else {
			retire(vk);
			struct import *im;
			err = get_import(vk, dv.base, dv.len, &im);
			w->start = (uintptr_t)addr;
			w->end = (uintptr_t)addr + len;
			if (!err)
				err = submit(vk, k, im->buf, dv.offset, len,
					     push, groups, w);
			if (!err) {
				if (w->start < im->cpu_lo)
					im->cpu_lo = w->start;
				if (w->end > im->cpu_hi)
					im->cpu_hi = w->end;
				if (ticket)
					*ticket = w->value;
				w = NULL; /* in flight */
			}
		}
		pthread_mutex_unlock(&vk->lock);
		/* The pages stay the device's until a CPU access: the
		 * invalidation then waits for this work. */
		dxm_exclusive_unlock(vk->ctx, addr, len, dev);
		break;
	}
	if (op)
		dxm_notifier_remove(op);
	free(w);
	free(dev);
	return err;
}

int dxm_vk_wait(struct dxm_vk *vk, uint64_t ticket, uint64_t timeout_ns)
{
	if (!vk)
		return -EINVAL;
	pthread_mutex_lock(&vk->lock);
	bool lost = vk->st.lost;
	pthread_mutex_unlock(&vk->lock);
	if (lost)
		return -ENODEV;
	int err = wait_value(vk, ticket, timeout_ns, false);
	if (!err) {
		pthread_mutex_lock(&vk->lock);
		retire(vk);
		pthread_mutex_unlock(&vk->lock);
	}
	return err;
}

int dxm_vk_done(struct dxm_vk *vk, uint64_t ticket)
{
	if (!vk)
		return -EINVAL;
	uint64_t v = 0;
	pthread_mutex_lock(&vk->lock);
	int ret = vk->st.lost ? -ENODEV : 0;
	if (!ret) {
		VkResult r = vkGetSemaphoreCounterValue(vk->dev, vk->timeline,
							&v);
		ret = r ? vk_err(r) : v >= ticket;
	}
	pthread_mutex_unlock(&vk->lock);
	return ret;
}

void dxm_vk_get_stats(struct dxm_vk *vk, struct dxm_vk_stats *st)
{
	pthread_mutex_lock(&vk->lock);
	*st = vk->st;
	pthread_mutex_unlock(&vk->lock);
}
