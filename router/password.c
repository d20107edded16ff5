/* password.c - Argon2id via libargon2, crypt(3) schemes via libxcrypt. */
#include "lib/common.h"
#include "router/password.h"
#include "lib/xalloc.h"
#include <argon2.h>
#include <crypt.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <strings.h>

#define SALT_LEN 16
#define HASH_LEN 32

struct scheme_prefix {
	const char *prefix;   /* Dovecot-style {SCHEME} */
	const char *expect;   /* what the hash itself must start with ("" = any crypt) */
};

static const struct scheme_prefix prefixes[] = {
	{ "{ARGON2ID}", "$argon2id$" },
	{ "{SHA512-CRYPT}", "$6$" },
	{ "{SHA256-CRYPT}", "$5$" },
	{ "{BLF-CRYPT}", "$2" },
	{ "{CRYPT}", "" },
};

/* strip_prefix - the hash after an optional {SCHEME}; NULL if the scheme is unknown
 * or the hash does not match what the scheme announces */
static const char *strip_prefix(const char *stored)
{
	if (stored[0] != '{')
		return stored;
	for (size_t i = 0; i < N_ELEMENTS(prefixes); i++) {
		size_t n = strlen(prefixes[i].prefix);
		if (strncasecmp(stored, prefixes[i].prefix, n) != 0)
			continue;
		const char *h = stored + n;
		if (strncmp(h, prefixes[i].expect, strlen(prefixes[i].expect)) != 0)
			return NULL;
		return h;
	}
	return NULL;
}

char *password_hash(const char *password, size_t len, const struct password_params *params,
		    const char **error_r)
{
	uint8_t salt[SALT_LEN];
	if (len > PASSWORD_MAX_LEN) {
		*error_r = "password too long";
		return NULL;
	}
	if (RAND_bytes(salt, sizeof(salt)) != 1) {
		*error_r = "no random bytes for a salt";
		return NULL;
	}
	size_t enc_len = argon2_encodedlen(params->t_cost, params->m_cost_kib, params->parallelism,
					   SALT_LEN, HASH_LEN, Argon2_id);
	char *out = xmalloc(enc_len);
	int r = argon2id_hash_encoded(params->t_cost, params->m_cost_kib, params->parallelism,
				      password, len, salt, SALT_LEN, HASH_LEN, out, enc_len);
	if (r != ARGON2_OK) {
		free(out);
		*error_r = argon2_error_message(r);
		return NULL;
	}
	return out;
}

/* is_crypt - a crypt(3) hash of a scheme we accept */
static bool is_crypt(const char *h)
{
	return strncmp(h, "$6$", 3) == 0 || strncmp(h, "$5$", 3) == 0 ||
	       strncmp(h, "$2b$", 4) == 0 || strncmp(h, "$2y$", 4) == 0 ||
	       strncmp(h, "$2a$", 4) == 0 || strncmp(h, "$y$", 3) == 0;
}

enum password_result password_verify(const char *stored, const char *password, size_t len)
{
	const char *h = strip_prefix(stored);
	if (h == NULL)
		return PASSWORD_BAD_HASH;
	if (len > PASSWORD_MAX_LEN)
		return PASSWORD_MISMATCH;
	if (strncmp(h, "$argon2id$", 10) == 0) {
		int r = argon2id_verify(h, password, len);
		if (r == ARGON2_OK)
			return PASSWORD_MATCH;
		return r == ARGON2_VERIFY_MISMATCH ? PASSWORD_MISMATCH : PASSWORD_BAD_HASH;
	}
	if (!is_crypt(h))
		return PASSWORD_BAD_HASH;
	/* crypt(3) takes a C string: a password with a NUL in it cannot match */
	if (memchr(password, '\0', len) != NULL)
		return PASSWORD_MISMATCH;
	char *pw = xstrndup(password, len);
	struct crypt_data *cd = xcalloc(1, sizeof(*cd));
	const char *out = crypt_rn(pw, h, cd, sizeof(*cd));
	enum password_result res = PASSWORD_BAD_HASH;
	if (out != NULL && out[0] != '*') {
		size_t hl = strlen(h);
		res = strlen(out) == hl && CRYPTO_memcmp(out, h, hl) == 0 ? PASSWORD_MATCH
									: PASSWORD_MISMATCH;
	}
	OPENSSL_cleanse(pw, len);
	free(pw);
	OPENSSL_cleanse(cd, sizeof(*cd));
	free(cd);
	return res;
}

bool password_hash_valid(const char *stored)
{
	const char *h = strip_prefix(stored);
	if (h == NULL)
		return false;
	if (strncmp(h, "$argon2id$", 10) == 0) {
		/* decode by verifying a dummy password: a malformed string is an error, not a mismatch */
		return argon2id_verify(h, "", 0) != ARGON2_DECODING_FAIL &&
		       argon2id_verify(h, "", 0) != ARGON2_INCORRECT_TYPE;
	}
	return is_crypt(h);
}
