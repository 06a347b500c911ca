// SPDX-License-Identifier: MIT
/*
 * Reproducer of the library bug "anon-held-window", fixed on 2026-12-05
 * (fuzz/regressions/README.md), which has no deterministic fuzzer input: a CPU read of an adopted page that a device took and unlocked,
 * while another thread sends the reader signals; after each read,
 * dxm_check_exclusive must say the page is no longer held.  It prints how
 * often it still said "held" (358 of 100000 before the fix, 0 after;
 * memfd regions always gave 0).  tests/test_inject.c proves the same
 * window at will with a delay after the move.  Build and run from the repository root after `meson compile -C build`:
 *
 *   cc -O2 -Iinclude fuzz/repro/anon-held-window.c -o /tmp/ahw \
 *      -Lbuild -ldxm -Wl,-rpath,$PWD/build -lpthread
 *   /tmp/ahw 1 100000     # adopted memory (fixed: 0)
 *   /tmp/ahw 0 100000     # memfd (0)
 */
#define _GNU_SOURCE
#include <dxm.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <sys/syscall.h>
static volatile int stop; static pid_t target;
static void h(int s){(void)s;}
static void *sig(void*a){(void)a; while(!stop){ syscall(SYS_tgkill,getpid(),target,SIGUSR1);} return 0;}
int main(int argc,char**argv){
	int anon=argc>1?atoi(argv[1]):1; long iters=argc>2?atol(argv[2]):200000;
	struct sigaction sa={0}; sa.sa_handler=h; sa.sa_flags=SA_RESTART; sigaction(SIGUSR1,&sa,0);
	struct dxm_ctx*ctx; struct dxm_ctx_opts o=DXM_OPTS(dxm_ctx_opts,.restore_around=1,.handler_threads=1);
	if(dxm_ctx_create(&ctx,&o))return 1;
	size_t ps=4096; char*p; static int owner;
	if(anon){p=mmap(0,ps,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); memset(p,1,ps); if(dxm_adopt(ctx,p,ps,0))return 2;}
	else if(dxm_alloc(ctx,ps,0,(void**)&p))return 3;
	target=syscall(SYS_gettid); pthread_t t; pthread_create(&t,0,sig,0);
	long bad=0; volatile uint64_t s=0;
	for(long i=0;i<iters;i++){ void*dev; if(dxm_make_exclusive(ctx,p,ps,&owner,&dev)!=1)return 4; dxm_exclusive_unlock(ctx,p,ps,&dev);
		s+=*(volatile uint64_t*)p; if(dxm_check_exclusive(ctx,p,ps,&dev)) bad++; }
	stop=1; pthread_join(t,0);
	printf("%s: %ld of %ld touches completed while dxm_check_exclusive still said held\n",anon?"adopted":"memfd",bad,iters);
	return 0;}
