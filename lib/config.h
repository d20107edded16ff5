/* config.h - the daemons' configuration contract (DESIGN.md):
 *   --config FILE of `key = value` lines ('#' comments),
 *   environment MAIL_<KEY>, command line --key-name=value,
 *   precedence command line > environment > file > built-in default.
 * Every key is declared in a table with its type, default, bounds and help;
 * unknown keys are refused with where they came from. --help lists every key,
 * --check-config validates and exits. */
#ifndef MAIL_CONFIG_H
#define MAIL_CONFIG_H
#include "lib/common.h"

enum cfg_type {
	CFG_STR,      /* any text */
	CFG_INT,      /* integer within [min, max] */
	CFG_BOOL,     /* yes/no, true/false, on/off, 1/0 */
	CFG_SIZE,     /* bytes with optional K, M, G, T suffix (powers of 1024), [min, max] */
	CFG_DURATION, /* ms, s, m, h, d suffix; a bare number is seconds; stored in ms, [min, max] ms */
	CFG_ADDR,     /* HOST:PORT or [V6]:PORT; empty means "disabled" */
};

struct cfg_def {
	const char *name; /* key as in the file: "data_dir" (flag --data-dir, env MAIL_DATA_DIR) */
	enum cfg_type type;
	const char *def;  /* default, as text; "" for none */
	int64_t min, max; /* bounds for INT, SIZE, DURATION (ms) */
	const char *help;
};
#define CFG_END { NULL, CFG_STR, NULL, 0, 0, NULL }

/* Keys every daemon has besides listen/metrics_listen (declared by each
 * daemon with its own default port): log_level, workers, shutdown_timeout,
 * tls_cert, tls_key, tls_ca, pid_file. */
extern const struct cfg_def config_common_defs[];

struct config;

/* CONFIG_CHECK: --check-config was given and the keys parsed; the daemon
 * validates what only it understands, then prints "configuration OK" and
 * exits 0 (config_check_ok) without starting anything. */
enum config_result { CONFIG_RUN, CONFIG_CHECK, CONFIG_EXIT_OK, CONFIG_EXIT_FAIL };

/* config_parse - pure: builds a config from tables (NULL-terminated array of
 * CFG_END-terminated tables), argv and envp. *help_r / *check_r tell whether
 * --help / --check-config were given. 0 / -1 with *error_r (static or
 * stored in the config; valid until config_free). On -1 *cfg_r is NULL and
 * *error_r points to a thread-local buffer. */
int config_parse(const struct cfg_def *const *tables, int argc, char *const *argv,
		 char *const *envp, struct config **cfg_r, bool *help_r, bool *check_r,
		 const char **error_r);

/* config_load - what main() calls: parse, print help or errors, and tell
 * main whether to run or exit with which status. */
enum config_result config_load(const char *service, const char *summary,
			       const struct cfg_def *const *tables, int argc, char **argv,
			       struct config **cfg_r);
/* config_check_ok - print the --check-config verdict and exit 0 */
void config_check_ok(const char *service) ATTR_NORETURN;
void config_print_help(FILE *out, const char *service, const char *summary,
		       const struct cfg_def *const *tables);
void config_free(struct config **cfgp);

/* Typed getters; asking for an undeclared key or the wrong type is a bug (panic). */
const char *config_str(const struct config *cfg, const char *name);
int64_t config_int(const struct config *cfg, const char *name);
bool config_bool(const struct config *cfg, const char *name);
uint64_t config_size(const struct config *cfg, const char *name);
int64_t config_duration_ms(const struct config *cfg, const char *name);

/* Value parsers, exposed for tests and for other code that reads such values. */
int config_parse_size(const char *s, uint64_t *bytes_r);
int config_parse_duration(const char *s, int64_t *ms_r);
int config_parse_bool(const char *s, bool *b_r);
/* config_parse_addr - "host:port" / "[v6]:port" -> host (caller buffer) and port */
int config_parse_addr(const char *s, char *host, size_t host_size, uint16_t *port_r);
#endif
