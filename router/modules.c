/* modules.c - the router's service modules, in registration order. Each
 * module (router/rt_*.c) exports one struct rt_module; see router.h. */
#include "lib/common.h"
#include "router/router.h"

extern const struct rt_module rt_mod_message;

extern const struct rt_module rt_mod_admin;

extern const struct rt_module rt_mod_mailbox;
extern const struct rt_module rt_mod_watch;
extern const struct rt_module rt_mod_jobs;

extern const struct rt_module rt_mod_auth;
extern const struct rt_module rt_mod_deliver;

const struct rt_module *const rt_modules[] = {
	&rt_mod_auth,
	&rt_mod_deliver,
	&rt_mod_mailbox,
	&rt_mod_watch,
	&rt_mod_admin,
	&rt_mod_jobs,
	&rt_mod_message,
	NULL
};
