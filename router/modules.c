/* modules.c - the router's service modules, in registration order. Each
 * module (router/rt_*.c) exports one struct rt_module; see router.h. */
#include "lib/common.h"
#include "router/router.h"

const struct rt_module *const rt_modules[] = {
	NULL
};
