/* base64.h - the one table-free digit decoder the base64 readers share
 * (gRPC -bin metadata, MIME Content-Transfer-Encoding, RFC 2047 B words);
 * each reader keeps its own policy for padding and junk. */
#ifndef MAIL_BASE64_H
#define MAIL_BASE64_H

/* base64_digit - value of one standard-alphabet base64 digit, or -1 */
static inline int base64_digit(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}
#endif
