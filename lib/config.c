/* config.c - key tables, file/env/flag sources, typed values.
 * The config owns every string it holds; getters return borrowed pointers. */
#include "lib/common.h"
#include "lib/config.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <strings.h>

#define CONFIG_MAX_LINE 4096
#define CONFIG_MAX_FILE_LINES 10000

const struct cfg_def config_common_defs[] = {
	{ "log_level", CFG_STR, "info", 0, 0, "debug, info, warn or error" },
	{ "workers", CFG_INT, "0", 0, 256, "event-loop worker threads; 0 = one per CPU" },
	{ "shutdown_timeout", CFG_DURATION, "30s", 0, 3600000,
	  "on SIGTERM, how long to let in-flight work finish before closing" },
	{ "tls_cert", CFG_STR, "", 0, 0, "PEM certificate chain file (empty: TLS off)" },
	{ "tls_key", CFG_STR, "", 0, 0, "PEM private key file" },
	{ "tls_ca", CFG_STR, "", 0, 0, "PEM CA file to verify peers (client certificates)" },
	{ "pid_file", CFG_STR, "", 0, 0, "write the process id here once ready" },
	CFG_END
};

struct config_value {
	const struct cfg_def *def;
	char *text;     /* the value as given */
	int64_t num;    /* INT, SIZE, DURATION, BOOL */
};

struct config {
	struct config_value *vals;
	size_t count;
	char error[512];
};

static _Thread_local char config_error_buf[512];

int config_parse_bool(const char *s, bool *b_r)
{
	static const char *const yes[] = { "yes", "true", "on", "1" };
	static const char *const no[] = { "no", "false", "off", "0" };
	for (size_t i = 0; i < N_ELEMENTS(yes); i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*b_r = true;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*b_r = false;
			return 0;
		}
	}
	return -1;
}

/* parse_uint_suffix - digits then a suffix looked up in units[]; overflow-checked */
static int parse_uint_suffix(const char *s, const char *const *names, const uint64_t *mult,
			     size_t n_units, uint64_t bare_mult, uint64_t *out_r)
{
	if (!isdigit((unsigned char)s[0]))
		return -1;
	uint64_t v = 0;
	const char *p = s;
	for (; isdigit((unsigned char)*p); p++) {
		unsigned d = (unsigned)(*p - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	uint64_t m = bare_mult;
	if (*p != '\0') {
		size_t i;
		for (i = 0; i < n_units; i++)
			if (strcasecmp(p, names[i]) == 0)
				break;
		if (i == n_units)
			return -1;
		m = mult[i];
	}
	if (m != 0 && v > UINT64_MAX / m)
		return -1;
	*out_r = v * m;
	return 0;
}

int config_parse_size(const char *s, uint64_t *bytes_r)
{
	static const char *const names[] = { "b", "k", "kb", "kib", "m", "mb", "mib",
					     "g", "gb", "gib", "t", "tb", "tib" };
	static const uint64_t mult[] = { 1, 1ULL << 10, 1ULL << 10, 1ULL << 10,
					 1ULL << 20, 1ULL << 20, 1ULL << 20,
					 1ULL << 30, 1ULL << 30, 1ULL << 30,
					 1ULL << 40, 1ULL << 40, 1ULL << 40 };
	return parse_uint_suffix(s, names, mult, N_ELEMENTS(names), 1, bytes_r);
}

int config_parse_duration(const char *s, int64_t *ms_r)
{
	static const char *const names[] = { "ms", "s", "m", "h", "d" };
	static const uint64_t mult[] = { 1, 1000, 60000, 3600000, 86400000 };
	uint64_t v;
	if (parse_uint_suffix(s, names, mult, N_ELEMENTS(names), 1000, &v) < 0 ||
	    v > INT64_MAX)
		return -1;
	*ms_r = (int64_t)v;
	return 0;
}

int config_parse_addr(const char *s, char *host, size_t host_size, uint16_t *port_r)
{
	const char *colon;
	const char *h = s;
	size_t hlen;
	if (s[0] == '[') {
		const char *end = strchr(s, ']');
		if (end == NULL || end[1] != ':')
			return -1;
		h = s + 1;
		hlen = (size_t)(end - h);
		colon = end + 1;
	} else {
		colon = strrchr(s, ':');
		if (colon == NULL)
			return -1;
		hlen = (size_t)(colon - s);
		if (memchr(s, ':', hlen) != NULL) /* bare IPv6 needs brackets */
			return -1;
	}
	if (hlen == 0 || hlen >= host_size)
		return -1;
	char *end;
	errno = 0;
	unsigned long port = strtoul(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end != '\0' || errno != 0 || port > 65535 ||
	    !isdigit((unsigned char)colon[1]))
		return -1;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	*port_r = (uint16_t)port;
	return 0;
}

static const char *type_name(enum cfg_type t)
{
	switch (t) {
	case CFG_STR: return "string";
	case CFG_INT: return "integer";
	case CFG_BOOL: return "bool";
	case CFG_SIZE: return "size";
	case CFG_DURATION: return "duration";
	case CFG_ADDR: return "address";
	}
	return "?";
}

/* value_set - validates text for the key's type and stores it; 0 / -1 with cfg->error */
static int value_set(struct config *cfg, struct config_value *v, const char *text,
		     const char *origin)
{
	const struct cfg_def *d = v->def;
	int64_t num = 0;
	int bad = 0;
	switch (d->type) {
	case CFG_STR:
		break;
	case CFG_INT: {
		char *end;
		errno = 0;
		long long n = strtoll(text, &end, 10);
		if (text[0] == '\0' || *end != '\0' || errno != 0)
			bad = 1;
		num = n;
		break;
	}
	case CFG_BOOL: {
		bool b;
		bad = config_parse_bool(text, &b) < 0;
		num = b;
		break;
	}
	case CFG_SIZE: {
		uint64_t b = 0;
		bad = config_parse_size(text, &b) < 0 || b > INT64_MAX;
		num = (int64_t)b;
		break;
	}
	case CFG_DURATION:
		bad = config_parse_duration(text, &num) < 0;
		break;
	case CFG_ADDR: {
		char host[256];
		uint16_t port;
		bad = text[0] != '\0' && config_parse_addr(text, host, sizeof(host), &port) < 0;
		break;
	}
	}
	if (bad) {
		snprintf(cfg->error, sizeof(cfg->error), "%s: %s: invalid %s value '%.100s'",
			 origin, d->name, type_name(d->type), text);
		return -1;
	}
	if ((d->type == CFG_INT || d->type == CFG_SIZE || d->type == CFG_DURATION) &&
	    (num < d->min || num > d->max)) {
		snprintf(cfg->error, sizeof(cfg->error),
			 "%s: %s: value '%.100s' out of range [%" PRId64 ", %" PRId64 "]%s",
			 origin, d->name, text, d->min, d->max,
			 d->type == CFG_DURATION ? " ms" : d->type == CFG_SIZE ? " bytes" : "");
		return -1;
	}
	free(v->text);
	v->text = xstrdup(text);
	v->num = num;
	return 0;
}

static struct config_value *find_value(const struct config *cfg, const char *name, size_t len)
{
	for (size_t i = 0; i < cfg->count; i++) {
		const char *k = cfg->vals[i].def->name;
		if (strlen(k) == len && strncmp(k, name, len) == 0)
			return &cfg->vals[i];
	}
	return NULL;
}

static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
		s[--n] = '\0';
	return s;
}

static int load_file(struct config *cfg, const char *path)
{
	FILE *f = fopen(path, "r");
	if (f == NULL) {
		snprintf(cfg->error, sizeof(cfg->error), "%s: %s", path, strerror(errno));
		return -1;
	}
	char line[CONFIG_MAX_LINE];
	char origin[300];
	int lineno = 0, ret = 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		lineno++;
		snprintf(origin, sizeof(origin), "%.256s:%d", path, lineno);
		if (strchr(line, '\n') == NULL && !feof(f)) {
			snprintf(cfg->error, sizeof(cfg->error), "%s: line too long", origin);
			ret = -1;
			break;
		}
		if (lineno > CONFIG_MAX_FILE_LINES) {
			snprintf(cfg->error, sizeof(cfg->error), "%s: too many lines", origin);
			ret = -1;
			break;
		}
		char *s = trim(line);
		if (s[0] == '\0' || s[0] == '#')
			continue;
		char *eq = strchr(s, '=');
		if (eq == NULL) {
			snprintf(cfg->error, sizeof(cfg->error), "%s: expected 'key = value'", origin);
			ret = -1;
			break;
		}
		*eq = '\0';
		char *key = trim(s), *val = trim(eq + 1);
		size_t vlen = strlen(val);
		if (vlen >= 2 && val[0] == '"' && val[vlen - 1] == '"') {
			val[vlen - 1] = '\0';
			val++;
		}
		struct config_value *v = find_value(cfg, key, strlen(key));
		if (v == NULL) {
			snprintf(cfg->error, sizeof(cfg->error), "%s: unknown key '%.100s'", origin, key);
			ret = -1;
			break;
		}
		if (value_set(cfg, v, val, origin) < 0) {
			ret = -1;
			break;
		}
	}
	fclose(f);
	return ret;
}

/* env_to_key - "MAIL_DATA_DIR" -> "data_dir" into buf; false if not ours */
static bool env_to_key(const char *env, size_t len, char *buf, size_t size)
{
	if (len <= 5 || strncmp(env, "MAIL_", 5) != 0 || len - 5 >= size)
		return false;
	for (size_t i = 5; i < len; i++)
		buf[i - 5] = (char)tolower((unsigned char)env[i]);
	buf[len - 5] = '\0';
	return true;
}

void config_free(struct config **cfgp)
{
	struct config *cfg = *cfgp;
	if (cfg == NULL)
		return;
	for (size_t i = 0; i < cfg->count; i++)
		free(cfg->vals[i].text);
	free(cfg->vals);
	free(cfg);
	*cfgp = NULL;
}

static int fail(struct config **cfgp, const char **error_r)
{
	snprintf(config_error_buf, sizeof(config_error_buf), "%s", (*cfgp)->error);
	*error_r = config_error_buf;
	config_free(cfgp);
	return -1;
}

int config_parse(const struct cfg_def *const *tables, int argc, char *const *argv,
		 char *const *envp, struct config **cfg_r, bool *help_r, bool *check_r,
		 const char **error_r)
{
	struct config *cfg = XNEW(struct config);
	size_t n = 0;
	for (size_t t = 0; tables[t] != NULL; t++)
		for (const struct cfg_def *d = tables[t]; d->name != NULL; d++)
			n++;
	cfg->vals = xcalloc(n, sizeof(*cfg->vals));
	for (size_t t = 0; tables[t] != NULL; t++) {
		for (const struct cfg_def *d = tables[t]; d->name != NULL; d++) {
			if (find_value(cfg, d->name, strlen(d->name)) != NULL)
				log_panic("duplicate config key", "key=%s", d->name);
			cfg->vals[cfg->count].def = d;
			if (value_set(cfg, &cfg->vals[cfg->count++], d->def, "default") < 0)
				log_panic("bad built-in default", "error=\"%s\"", cfg->error);
		}
	}
	*help_r = *check_r = false;
	const char *file = NULL;
	/* pass 1: find --config, --help, --check-config and reject malformed flags */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			*help_r = true;
		} else if (strcmp(a, "--check-config") == 0) {
			*check_r = true;
		} else if (strcmp(a, "--config") == 0) {
			if (i + 1 >= argc) {
				snprintf(cfg->error, sizeof(cfg->error), "--config needs a file name");
				return fail(&cfg, error_r);
			}
			file = argv[++i];
		} else if (strncmp(a, "--config=", 9) == 0) {
			file = a + 9;
		} else if (strncmp(a, "--", 2) != 0 || strchr(a, '=') == NULL) {
			snprintf(cfg->error, sizeof(cfg->error),
				 "unexpected argument '%.100s' (use --key-name=value)", a);
			return fail(&cfg, error_r);
		}
	}
	if (*help_r) {
		*cfg_r = cfg;
		return 0;
	}
	if (file != NULL && load_file(cfg, file) < 0)
		return fail(&cfg, error_r);
	char key[128], origin[160];
	for (size_t i = 0; envp != NULL && envp[i] != NULL; i++) {
		const char *eq = strchr(envp[i], '=');
		if (eq == NULL || !env_to_key(envp[i], (size_t)(eq - envp[i]), key, sizeof(key)))
			continue;
		struct config_value *v = find_value(cfg, key, strlen(key));
		snprintf(origin, sizeof(origin), "environment MAIL_%.100s", envp[i] + 5);
		if (v == NULL)
			continue; /* the environment is shared with other programs: ignore strangers */
		if (value_set(cfg, v, eq + 1, origin) < 0)
			return fail(&cfg, error_r);
	}
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--config") == 0) {
			i++;
			continue;
		}
		if (strncmp(a, "--", 2) != 0 || strncmp(a, "--config=", 9) == 0)
			continue;
		const char *eq = strchr(a, '=');
		if (eq == NULL)
			continue;
		size_t klen = (size_t)(eq - a - 2);
		if (klen >= sizeof(key)) {
			snprintf(cfg->error, sizeof(cfg->error), "unknown option '%.100s'", a);
			return fail(&cfg, error_r);
		}
		for (size_t k = 0; k < klen; k++)
			key[k] = a[2 + k] == '-' ? '_' : a[2 + k];
		key[klen] = '\0';
		struct config_value *v = find_value(cfg, key, klen);
		if (v == NULL) {
			snprintf(cfg->error, sizeof(cfg->error), "unknown option '--%.*s'",
				 (int)MAIL_MIN(klen, 100), a + 2);
			return fail(&cfg, error_r);
		}
		snprintf(origin, sizeof(origin), "command line --%.*s", (int)MAIL_MIN(klen, 100), a + 2);
		if (value_set(cfg, v, eq + 1, origin) < 0)
			return fail(&cfg, error_r);
	}
	enum log_level lv;
	struct config_value *ll = find_value(cfg, "log_level", 9);
	if (ll != NULL && log_level_parse(ll->text, &lv) < 0) {
		snprintf(cfg->error, sizeof(cfg->error), "log_level: unknown level '%.50s'", ll->text);
		return fail(&cfg, error_r);
	}
	*cfg_r = cfg;
	return 0;
}

void config_print_help(FILE *out, const char *service, const char *summary,
		       const struct cfg_def *const *tables)
{
	fprintf(out, "%s - %s\n\nUsage: %s [--config FILE] [--key-name=value ...] [--check-config]\n\n"
		"Every key can be set in the file as `key = value`, in the environment as\n"
		"MAIL_KEY, or on the command line as --key-name=value (that order of precedence,\n"
		"the command line winning). Keys:\n\n",
		service, summary, service);
	for (size_t t = 0; tables[t] != NULL; t++) {
		for (const struct cfg_def *d = tables[t]; d->name != NULL; d++) {
			char flag[128];
			size_t k;
			for (k = 0; d->name[k] != '\0' && k < sizeof(flag) - 1; k++)
				flag[k] = d->name[k] == '_' ? '-' : d->name[k];
			flag[k] = '\0';
			fprintf(out, "  --%s=<%s>  (default: %s)\n      %s", flag, type_name(d->type),
				d->def[0] != '\0' ? d->def : "\"\"", d->help);
			if (d->type == CFG_INT)
				fprintf(out, " [%" PRId64 "..%" PRId64 "]", d->min, d->max);
			fputc('\n', out);
		}
	}
}

enum config_result config_load(const char *service, const char *summary,
			       const struct cfg_def *const *tables, int argc, char **argv,
			       struct config **cfg_r)
{
	extern char **environ;
	bool help, check;
	const char *error;
	*cfg_r = NULL;
	if (config_parse(tables, argc, argv, environ, cfg_r, &help, &check, &error) < 0) {
		fprintf(stderr, "%s: configuration error: %s\n", service, error);
		return CONFIG_EXIT_FAIL;
	}
	if (help) {
		config_print_help(stdout, service, summary, tables);
		config_free(cfg_r);
		return CONFIG_EXIT_OK;
	}
	enum log_level lv = LOG_LEVEL_INFO;
	(void)log_level_parse(config_str(*cfg_r, "log_level"), &lv);
	log_init(service, lv);
	return check ? CONFIG_CHECK : CONFIG_RUN;
}

void config_check_ok(const char *service)
{
	printf("%s: configuration OK\n", service);
	exit(0);
}

static const struct config_value *get(const struct config *cfg, const char *name,
				      enum cfg_type type)
{
	const struct config_value *v = find_value(cfg, name, strlen(name));
	if (v == NULL)
		log_panic("undeclared config key", "key=%s", name);
	if (v->def->type != type && !(type == CFG_STR && v->def->type == CFG_ADDR))
		log_panic("config key read with the wrong type", "key=%s", name);
	return v;
}

const char *config_str(const struct config *cfg, const char *name)
{
	return get(cfg, name, CFG_STR)->text;
}

int64_t config_int(const struct config *cfg, const char *name)
{
	return get(cfg, name, CFG_INT)->num;
}

bool config_bool(const struct config *cfg, const char *name)
{
	return get(cfg, name, CFG_BOOL)->num != 0;
}

uint64_t config_size(const struct config *cfg, const char *name)
{
	return (uint64_t)get(cfg, name, CFG_SIZE)->num;
}

int64_t config_duration_ms(const struct config *cfg, const char *name)
{
	return get(cfg, name, CFG_DURATION)->num;
}
