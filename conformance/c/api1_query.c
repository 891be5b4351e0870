// SPDX-License-Identifier: GPL-2.0
/*
 * API-1: a C (and C++) program built against the patched UAPI header.
 *
 * <linux/aem.h> comes first, alone, to prove it is self-contained.  The
 * program calls aem_query() through syscall(2) and checks what it gets,
 * printing one "ok ..." or "FAIL ..." line per check; it exits non-zero
 * on any failure.
 */
#ifndef _GNU_SOURCE	/* g++ defines it already */
#define _GNU_SOURCE	/* syscall() */
#endif
#include <linux/aem.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef __cplusplus
static_assert(sizeof(struct aem_features) == AEM_FEATURES_SIZE_VER0,
	      "struct aem_features size");
#define LANG "c++"
#else
_Static_assert(sizeof(struct aem_features) == AEM_FEATURES_SIZE_VER0,
	       "struct aem_features size");
#define LANG "c"
#endif

static int failures;

static void check(int cond, const char *what)
{
	printf("%s %s: %s\n", cond ? "ok" : "FAIL", LANG, what);
	if (!cond)
		failures++;
}

int main(void)
{
	struct aem_features info;
	long ret;

	memset(&info, 0xff, sizeof(info));
	ret = syscall(__NR_aem_query, &info, sizeof(info), 0);
	check(ret == 0, "aem_query returns 0");
	check(info.size == sizeof(info), "size is the kernel's struct size");
	check(info.abi_version == AEM_ABI_VERSION, "abi_version matches header");
	check((info.features & AEM_FEATURE_QUERY) != 0, "AEM_FEATURE_QUERY set");
	check((info.sources & 1) == 0, "bit 0 of sources is not a source");

	errno = 0;
	ret = syscall(__NR_aem_query, &info, sizeof(info), 1);
	check(ret == -1 && errno == EINVAL, "flags=1 gives EINVAL");

	errno = 0;
	ret = syscall(__NR_aem_query, (void *)0, sizeof(info), 0);
	check(ret == -1 && errno == EFAULT, "NULL info gives EFAULT");

	printf("abi_version=%u features=%#llx sources=%#llx\n",
	       info.abi_version, (unsigned long long)info.features,
	       (unsigned long long)info.sources);
	return failures ? 1 : 0;
}
