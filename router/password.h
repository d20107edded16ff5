/* password.h - password hashes of accounts. New hashes are Argon2id (PHC
 * string "$argon2id$v=19$m=...,t=...,p=...$salt$hash"). For users migrating
 * from Dovecot we also verify crypt(3) hashes, bare or with Dovecot's scheme
 * prefix: {SHA512-CRYPT} ($6$), {SHA256-CRYPT} ($5$), {BLF-CRYPT} ($2y$/$2b$),
 * {CRYPT}, and {ARGON2ID}. These functions are slow on purpose: call them
 * from a workpool thread, never from an event loop. */
#ifndef MAIL_PASSWORD_H
#define MAIL_PASSWORD_H
#include "lib/common.h"

struct password_params {
	uint32_t t_cost;      /* iterations */
	uint32_t m_cost_kib;  /* memory */
	uint32_t parallelism;
};
/* OWASP's Argon2id recommendation: m=19 MiB, t=2, p=1 */
#define PASSWORD_DEFAULT_PARAMS { 2, 19 * 1024, 1 }

#define PASSWORD_MAX_LEN 1024 /* longer passwords are refused, never hashed */

/* password_hash - a new Argon2id PHC string the caller frees; NULL if the
 * password is too long or the parameters are invalid (with *error_r) */
char *password_hash(const char *password, size_t len, const struct password_params *params,
		    const char **error_r);

enum password_result { PASSWORD_MISMATCH = 0, PASSWORD_MATCH = 1, PASSWORD_BAD_HASH = -1 };
/* password_verify - constant-time comparison; BAD_HASH for an unknown scheme */
enum password_result password_verify(const char *stored, const char *password, size_t len);
/* password_hash_valid - whether `stored` is a hash we can verify (import check) */
bool password_hash_valid(const char *stored);
#endif
