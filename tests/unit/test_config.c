/* test_config.c - the configuration contract: precedence, types, bounds,
 * unknown keys with their origin, --help/--check-config flags. */
#include <stdarg.h>
#include <setjmp.h>
#include <stdlib.h>
#include <unistd.h>
#include <cmocka.h>
#include "lib/common.h"
#include "lib/config.h"
#include "lib/log.h"

static const struct cfg_def test_defs[] = {
	{ "listen", CFG_ADDR, "127.0.0.1:7201", 0, 0, "main listener" },
	{ "data_dir", CFG_STR, "/tmp/x", 0, 0, "where" },
	{ "max_conn", CFG_INT, "100", 1, 1000, "connections" },
	{ "max_size", CFG_SIZE, "10M", 1024, 1LL << 40, "bytes" },
	{ "timeout", CFG_DURATION, "30s", 1, 3600000, "time" },
	{ "fast", CFG_BOOL, "no", 0, 0, "flag" },
	CFG_END
};
static const struct cfg_def *const tables[] = { config_common_defs, test_defs, NULL };

static int parse(int argc, char **argv, char **envp, struct config **cfg, const char **err)
{
	bool help, check;
	return config_parse(tables, argc, argv, envp, cfg, &help, &check, err);
}

static void test_defaults(void **state)
{
	char *argv[] = { "prog", NULL };
	struct config *cfg;
	const char *err;
	assert_int_equal(parse(1, argv, NULL, &cfg, &err), 0);
	assert_string_equal(config_str(cfg, "listen"), "127.0.0.1:7201");
	assert_int_equal(config_int(cfg, "max_conn"), 100);
	assert_int_equal(config_size(cfg, "max_size"), 10 * 1024 * 1024);
	assert_int_equal(config_duration_ms(cfg, "timeout"), 30000);
	assert_false(config_bool(cfg, "fast"));
	assert_string_equal(config_str(cfg, "log_level"), "info");
	config_free(&cfg);
	assert_null(cfg);
}

static void test_precedence(void **state)
{
	char path[] = "/tmp/mailcfgXXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	const char *text = "# comment\n\nmax_conn = 5\ndata_dir = \"/from/file\"\nfast = yes\ntimeout=2m\n";
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	char cfgarg[64];
	snprintf(cfgarg, sizeof(cfgarg), "--config=%s", path);
	char *argv[] = { "prog", cfgarg, "--max-conn=7", NULL };
	char *envp[] = { "MAIL_MAX_CONN=6", "MAIL_DATA_DIR=/from/env", "MAIL_UNRELATED=1", "HOME=/", NULL };
	struct config *cfg;
	const char *err = NULL;
	assert_int_equal(parse(3, argv, envp, &cfg, &err), 0);
	assert_int_equal(config_int(cfg, "max_conn"), 7);           /* flag beats env and file */
	assert_string_equal(config_str(cfg, "data_dir"), "/from/env"); /* env beats file */
	assert_true(config_bool(cfg, "fast"));                        /* file beats default */
	assert_int_equal(config_duration_ms(cfg, "timeout"), 120000);
	config_free(&cfg);
	unlink(path);
}

static void test_errors(void **state)
{
	struct config *cfg;
	const char *err;
	char *a1[] = { "prog", "--no-such-key=1", NULL };
	assert_int_equal(parse(2, a1, NULL, &cfg, &err), -1);
	assert_non_null(strstr(err, "no-such-key"));
	assert_null(cfg);
	char *a2[] = { "prog", "--max-conn=5000", NULL };
	assert_int_equal(parse(2, a2, NULL, &cfg, &err), -1);
	assert_non_null(strstr(err, "out of range"));
	char *a3[] = { "prog", "--max-size=12Q", NULL };
	assert_int_equal(parse(2, a3, NULL, &cfg, &err), -1);
	char *a4[] = { "prog", "--listen=nocolon", NULL };
	assert_int_equal(parse(2, a4, NULL, &cfg, &err), -1);
	char *a5[] = { "prog", "positional", NULL };
	assert_int_equal(parse(2, a5, NULL, &cfg, &err), -1);
	char *a6[] = { "prog", "--log-level=loud", NULL };
	assert_int_equal(parse(2, a6, NULL, &cfg, &err), -1);

	char path[] = "/tmp/mailcfgXXXXXX";
	int fd = mkstemp(path);
	const char *text = "max_conn = 5\nbogus = 1\n";
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	char cfgarg[64];
	snprintf(cfgarg, sizeof(cfgarg), "--config=%s", path);
	char *a7[] = { "prog", cfgarg, NULL };
	assert_int_equal(parse(2, a7, NULL, &cfg, &err), -1);
	char want[80];
	snprintf(want, sizeof(want), "%s:2: unknown key 'bogus'", path);
	assert_string_equal(err, want);
	unlink(path);
}

static void test_flags(void **state)
{
	char *argv[] = { "prog", "--check-config", "--help", NULL };
	struct config *cfg;
	const char *err;
	bool help, check;
	assert_int_equal(config_parse(tables, 3, argv, NULL, &cfg, &help, &check, &err), 0);
	assert_true(help);
	assert_true(check);
	config_free(&cfg);
}

static void test_value_parsers(void **state)
{
	uint64_t b;
	int64_t ms;
	char host[64];
	uint16_t port;
	assert_int_equal(config_parse_size("64K", &b), 0);
	assert_int_equal(b, 65536);
	assert_int_equal(config_parse_size("99999999999999999999", &b), -1);
	assert_int_equal(config_parse_size("20000000000T", &b), -1);
	assert_int_equal(config_parse_duration("250ms", &ms), 0);
	assert_int_equal(ms, 250);
	assert_int_equal(config_parse_duration("5", &ms), 0);
	assert_int_equal(ms, 5000);
	assert_int_equal(config_parse_duration("-5", &ms), -1);
	assert_int_equal(config_parse_addr("[::1]:7100", host, sizeof(host), &port), 0);
	assert_string_equal(host, "::1");
	assert_int_equal(port, 7100);
	assert_int_equal(config_parse_addr("::1:7100", host, sizeof(host), &port), -1);
	assert_int_equal(config_parse_addr("h:70000", host, sizeof(host), &port), -1);
	assert_int_equal(config_parse_addr("h:", host, sizeof(host), &port), -1);
}

static void test_log_quote(void **state)
{
	char buf[32];
	assert_string_equal(log_quote(buf, sizeof(buf), "a\"b\\\r\n", 6), "\"a\\\"b\\\\\\x0d\\x0a\"");
	const char *longs = "0123456789012345678901234567890123456789";
	log_quote(buf, sizeof(buf), longs, strlen(longs));
	assert_true(strlen(buf) < sizeof(buf));
	assert_non_null(strstr(buf, "...\""));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_precedence),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_flags),
		cmocka_unit_test(test_value_parsers),
		cmocka_unit_test(test_log_quote),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
