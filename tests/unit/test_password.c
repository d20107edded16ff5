/* test_password.c - Argon2id hashes we make, and crypt(3) hashes imported
 * from Dovecot (made by other tools: openssl passwd, libxcrypt via python). */
#include <stdarg.h>
#include <setjmp.h>
#include <stdlib.h>
#include <cmocka.h>
#include "lib/common.h"
#include "router/password.h"

static const struct password_params fast = { 1, 1024, 1 }; /* keep the test quick */

static void test_argon2id_round_trip(void **state)
{
	const char *err = NULL;
	char *h = password_hash("s3cret", 6, &fast, &err);
	assert_non_null(h);
	assert_true(strncmp(h, "$argon2id$v=19$m=1024,t=1,p=1$", 30) == 0);
	assert_int_equal(password_verify(h, "s3cret", 6), PASSWORD_MATCH);
	assert_int_equal(password_verify(h, "s3creT", 6), PASSWORD_MISMATCH);
	assert_int_equal(password_verify(h, "s3cret", 5), PASSWORD_MISMATCH);
	assert_true(password_hash_valid(h));
	char *h2 = password_hash("s3cret", 6, &fast, &err);
	assert_string_not_equal(h, h2); /* salted */
	char pref[512];
	snprintf(pref, sizeof(pref), "{ARGON2ID}%s", h);
	assert_int_equal(password_verify(pref, "s3cret", 6), PASSWORD_MATCH);
	/* a password containing NUL bytes is hashed whole */
	char *hn = password_hash("a\0b", 3, &fast, &err);
	assert_int_equal(password_verify(hn, "a\0b", 3), PASSWORD_MATCH);
	assert_int_equal(password_verify(hn, "a", 1), PASSWORD_MISMATCH);
	free(h);
	free(h2);
	free(hn);
}

static void test_crypt_imports(void **state)
{
	/* openssl passwd -6 -salt saltsalt 'correct horse' */
	const char *sha512 = "$6$saltsalt$hRM5XZ86KXEw9UOmjigeVqFgULtFB2sgpC9lXQDfMib3Zgw7mEiUvBJI2EplzfAqxL5Vvwp2scFtv/uamSo5z0";
	const char *sha256 = "$5$saltsalt$myjXcpMpE2Ofk7fj9hqyNYSn6lmWG4Mqnjx.KIRRr4/";
	const char *bcrypt = "$2b$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2";
	const char *pw = "correct horse";
	char buf[256];
	assert_int_equal(password_verify(sha512, pw, strlen(pw)), PASSWORD_MATCH);
	assert_int_equal(password_verify(sha512, "wrong", 5), PASSWORD_MISMATCH);
	snprintf(buf, sizeof(buf), "{SHA512-CRYPT}%s", sha512);
	assert_int_equal(password_verify(buf, pw, strlen(pw)), PASSWORD_MATCH);
	snprintf(buf, sizeof(buf), "{SHA256-CRYPT}%s", sha256);
	assert_int_equal(password_verify(buf, pw, strlen(pw)), PASSWORD_MATCH);
	snprintf(buf, sizeof(buf), "{BLF-CRYPT}%s", bcrypt);
	assert_int_equal(password_verify(buf, pw, strlen(pw)), PASSWORD_MATCH);
	assert_int_equal(password_verify(buf, "correct horsf", 13), PASSWORD_MISMATCH);
	/* a scheme that announces one thing and holds another is refused */
	snprintf(buf, sizeof(buf), "{BLF-CRYPT}%s", sha512);
	assert_int_equal(password_verify(buf, pw, strlen(pw)), PASSWORD_BAD_HASH);
}

static void test_bad_hashes(void **state)
{
	const char *bad[] = { "", "plain", "{PLAIN}secret", "{MD5}x", "$1$md5$old",
			      "$argon2id$v=19$m=zz", "$argon2i$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaA" };
	for (size_t i = 0; i < N_ELEMENTS(bad); i++) {
		assert_int_equal(password_verify(bad[i], "x", 1), PASSWORD_BAD_HASH);
		assert_false(password_hash_valid(bad[i]));
	}
	char big[PASSWORD_MAX_LEN + 2];
	memset(big, 'a', sizeof(big));
	const char *err = NULL;
	assert_null(password_hash(big, sizeof(big), &fast, &err));
	assert_non_null(err);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_argon2id_round_trip),
		cmocka_unit_test(test_crypt_imports),
		cmocka_unit_test(test_bad_hashes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
