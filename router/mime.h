/* mime.h - MIME structure of a stored message, for the router and IMAP FETCH.
 *
 * mime_parse() takes a whole message (bytes as stored: CRLF or bare LF) and
 * builds the part tree (RFC 2045/2046): for every part the byte range of its
 * header and of its body, content type and parameters (RFC 2231 decoded), the
 * other Content-* fields, its size and line count. From the tree come the IMAP
 * ENVELOPE, BODY and BODYSTRUCTURE strings (RFC 3501 7.4.2, RFC 9051 7.5.2),
 * the byte range of any section (BODY[1.2.MIME], BODY[2.TEXT] ...), raw and
 * RFC 2047-decoded header values for SEARCH/SORT, and parsed address lists.
 *
 * Pure and bounded: bytes in, a tree out, no I/O, no recursion driven by the
 * input, O(n) in the message size. Hostile or broken input never fails: past a
 * limit (struct mime_limits) the rest becomes an opaque part and a flag says so.
 *
 * Ownership: the tree and all its strings belong to struct mime_message and go
 * with mime_message_free(). The message keeps no pointer to the input bytes.
 * Functions returning char * hand over a string the caller frees with free().
 */
#ifndef ROUTER_MIME_H
#define ROUTER_MIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Default limits; a field of struct mime_limits left 0 takes its default. */
#define MIME_DEFAULT_MAX_DEPTH 32		/* multipart / message/rfc822 nesting */
#define MIME_DEFAULT_MAX_PARTS 1000		/* parts in the tree, root included */
#define MIME_DEFAULT_MAX_HEADER_LINE (64 * 1024) /* one field, folded lines included */
#define MIME_DEFAULT_MAX_HEADERS 1000		/* fields kept per part */
#define MIME_DEFAULT_MAX_TOTAL_HEADERS 10000	/* fields kept in the whole message */
#define MIME_DEFAULT_MAX_BOUNDARY_LEN 70	/* RFC 2046 5.1.1 */
#define MIME_DEFAULT_MAX_SIZE ((size_t)128 * 1024 * 1024) /* bytes scanned for structure */
#define MIME_DEFAULT_MAX_PARAMS 64		/* parameters per Content-Type/-Disposition */
#define MIME_DEFAULT_MAX_ADDRESSES 1000		/* addresses per address header */

/* Ceilings no configuration can raise: they bound the exporters' recursion
 * (tree height) and the per-line boundary comparison. */
#define MIME_HARD_MAX_DEPTH 100
#define MIME_HARD_MAX_BOUNDARY_LEN 998		/* RFC 5322 line length */

struct mime_limits {
	unsigned int max_depth;
	unsigned int max_parts;
	size_t max_header_line;
	unsigned int max_headers;
	unsigned int max_total_headers;	/* bounds memory: a field costs more than its bytes */
	size_t max_boundary_len;
	size_t max_size;
	unsigned int max_params;
	unsigned int max_addresses;
};

extern const struct mime_limits mime_default_limits;

enum mime_part_kind {
	MIME_PART_LEAF = 0,	/* a body: text, attachment, or an opaque container */
	MIME_PART_MULTIPART,	/* children are the body parts */
	MIME_PART_MESSAGE,	/* message/rfc822: one child, the encapsulated message */
};

/* Part flags (struct mime_part.flags); their union is mime_message_flags(). */
#define MIME_F_NO_HEADER_END	0x0001u	/* header ran to the part end, no blank line */
#define MIME_F_HEADER_TRUNCATED	0x0002u	/* a field over max_header_line, or fields over
					 * max_headers or max_total_headers dropped */
#define MIME_F_NO_BOUNDARY	0x0004u	/* multipart without a usable boundary: opaque */
#define MIME_F_MISSING_END	0x0008u	/* multipart without its close delimiter */
#define MIME_F_DEPTH_LIMIT	0x0010u	/* container not opened: max_depth */
#define MIME_F_PARTS_LIMIT	0x0020u	/* container not opened or children dropped: max_parts */
#define MIME_F_SIZE_LIMIT	0x0040u	/* structure not scanned past max_size */
#define MIME_F_PARAMS_TRUNCATED	0x0080u	/* parameters over max_params dropped */
#define MIME_F_ENCODED_MESSAGE	0x0100u	/* message/rfc822 with base64/QP: opaque */

struct mime_param {
	char *name;	/* lowercased, without the RFC 2231 "*N*" decoration */
	char *value;	/* continuations joined; extended values converted to UTF-8 */
	/* NULL, or the merged RFC 2231 form "charset'lang'%XX..." when the
	 * decoded value is not plain ASCII or the charset is not one we know:
	 * BODYSTRUCTURE then sends name* with it, losslessly. */
	char *ext_value;
};

struct mime_header {
	char *name;	/* as written */
	char *value;	/* unfolded, leading/trailing blanks trimmed, raw bytes (NULs dropped) */
};

/* One node of the tree. Read-only for users; everything is owned by the
 * message. A "message node" (is_message) is the top-level message or the
 * child of a message/rfc822 part: its header carries the RFC 5322 fields. */
struct mime_part {
	struct mime_part *parent;
	struct mime_part *next;		/* next sibling */
	struct mime_part *children;	/* first child */
	struct mime_part *last_child;	/* parser bookkeeping */
	unsigned int child_count;
	unsigned int index;		/* position in the message's pre-order list */
	unsigned int depth;		/* 0 for the top-level message */
	enum mime_part_kind kind;
	bool is_message;
	unsigned int flags;		/* MIME_F_* */

	/* byte ranges in the message as stored; the header range includes the
	 * blank line that ends it, the body range excludes the line break that
	 * belongs to the following boundary (RFC 2046 5.1.1) */
	size_t header_offset, header_size;
	size_t body_offset, body_size;
	uint64_t lines;			/* lines of the body (a last unterminated one counts) */

	char *type, *subtype;		/* lowercased; defaults applied */
	struct mime_param *params;	/* text/... without parameters gets charset=us-ascii */
	unsigned int param_count;
	char *id, *description, *md5, *location; /* raw, NULL if absent */
	char *encoding;			/* lowercased token, "7bit" if absent */
	char *disposition;		/* lowercased token or NULL */
	struct mime_param *disp_params;
	unsigned int disp_param_count;
	char **languages;
	unsigned int language_count;

	struct mime_header *headers;	/* in order, up to max_headers */
	unsigned int header_count;
};

struct mime_message;

/* mime_parse - parse a whole message; lim NULL means the defaults. Returns 0
 * with *msg_r set for any input (broken MIME is tolerated); -1 only for a NULL
 * buffer with a non-zero length. */
int mime_parse(const uint8_t *msg, size_t len, const struct mime_limits *lim,
	       struct mime_message **msg_r, const char **error_r);
void mime_message_free(struct mime_message **mp);

const struct mime_part *mime_message_root(const struct mime_message *m);
size_t mime_message_size(const struct mime_message *m);
unsigned int mime_message_part_count(const struct mime_message *m);
/* mime_message_part - the i-th part in pre-order (0 is the root), or NULL */
const struct mime_part *mime_message_part(const struct mime_message *m, unsigned int i);
unsigned int mime_message_flags(const struct mime_message *m);

/* IMAP strings, caller owns. ENVELOPE of the top-level message; BODY
 * (extended=false) or BODYSTRUCTURE (extended=true). Strings are quoted, or
 * sent as {n} literals when they hold CR, LF or 8-bit bytes or are long. */
char *mime_envelope_export(const struct mime_message *m);
char *mime_bodystructure_export(const struct mime_message *m, bool extended);
/* the same for one part (a message node for the envelope) */
char *mime_part_envelope_export(const struct mime_message *m, const struct mime_part *p);
char *mime_part_bodystructure_export(const struct mime_message *m, const struct mime_part *p,
				     bool extended);

/* Sections (RFC 3501 6.4.5). */
struct mime_range {
	size_t offset;
	size_t size;
};

/* mime_find_section - the part a numeric section path ("1.2.3") names; ""
 * names the top-level message. -1 if there is no such part. */
int mime_find_section(const struct mime_message *m, const char *path,
		      const struct mime_part **part_r);
/* mime_section_range - byte range of BODY[<section>] for a whole section
 * spec: "", "TEXT", "HEADER", "1.2", "1.2.MIME", "3.HEADER", "3.TEXT"
 * (case-insensitive). "HEADER.FIELDS ..." and "HEADER.FIELDS.NOT ..." give
 * the header range: the caller filters the fields. -1 with *error_r if the
 * section does not exist or the suffix does not apply (HEADER/TEXT only on
 * the message or a message/rfc822 part, MIME only after a part number). */
int mime_section_range(const struct mime_message *m, const char *section,
		       struct mime_range *range_r, const char **error_r);
/* the ranges of one part: BODY[x], BODY[x.MIME], and BODY[x.HEADER] and
 * BODY[x.TEXT] (-1 unless p is a message/rfc822 part or the top-level message) */
void mime_part_body_range(const struct mime_part *p, struct mime_range *r);
void mime_part_mime_range(const struct mime_part *p, struct mime_range *r);
int mime_part_header_range(const struct mime_part *p, struct mime_range *r);
int mime_part_text_range(const struct mime_part *p, struct mime_range *r);

/* mime_sections_export - every addressable section with its range, one per
 * line "[SECTION] OFFSET SIZE\n" (e.g. "[1.2.MIME] 120 64"), "[]" first.
 * Stored next to BODYSTRUCTURE so FETCH resolves sections without the parse
 * tree; mime_sections_lookup() reads it back. */
char *mime_sections_export(const struct mime_message *m);
int mime_sections_lookup(const char *table, const char *section, struct mime_range *range_r);

/* Header access. mime_header_get - first field called name (case-insensitive)
 * of part (NULL: the top-level message), unfolded raw value, or NULL. */
const char *mime_header_get(const struct mime_message *m, const struct mime_part *part,
			    const char *name);
/* mime_header_decode - RFC 2047 encoded words decoded (B and Q; UTF-8,
 * US-ASCII, ISO-8859-1, ISO-8859-15, Windows-1252; other charsets kept as
 * bytes), whitespace between adjacent encoded words dropped, line breaks
 * removed, the result valid UTF-8 (U+FFFD for invalid bytes). Caller owns. */
char *mime_header_decode(const char *raw);
char *mime_header_decode_n(const char *raw, size_t len);

/* Address lists (RFC 5322 3.4 with the obsolete syntax of 4.4), in the IMAP
 * envelope shape: a group is a start entry (mailbox = group name, host NULL)
 * then its members then an end entry (mailbox and host NULL). */
struct mime_address {
	struct mime_address *next;
	char *name;	/* display name (quotes removed), or a comment, or NULL */
	char *route;	/* obsolete source route "@a,@b", or NULL */
	char *mailbox;	/* local part (quotes removed); "MISSING_MAILBOX" if absent */
	char *host;	/* domain; "MISSING_DOMAIN" if absent */
};
#define MIME_MISSING_MAILBOX "MISSING_MAILBOX"
#define MIME_MISSING_DOMAIN "MISSING_DOMAIN"

/* mime_addresses_parse - parse len bytes; at most max_count entries (0: the
 * default); NULL for an empty list. Never fails: junk is skipped. */
struct mime_address *mime_addresses_parse(const char *str, size_t len, unsigned int max_count);
void mime_addresses_free(struct mime_address **ap);

#endif
