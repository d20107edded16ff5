-- 0001_init.sql - the metadata schema of the mail service, version 1.
--
-- MIGRATIONS ARE ADDITIVE ONLY (see README in this directory): add tables, nullable
-- or defaulted columns, indexes and functions; never drop, rename or retype what the
-- previous release uses. Never edit this file once released: add 0002_*.sql.
--
-- Design notes
--  * Every atomic mail operation is ONE SQL function call (PL/pgSQL below), so the
--    router does one round trip per operation and the transaction is the call's
--    implicit one (router/db.c runs each request as its own pipeline sync segment).
--  * Lock order, everywhere: accounts -> mailboxes (by id) -> blobs (by id). The
--    functions lock the account row first when they change messages, so concurrent
--    deliveries, expunges, copies and moves of one account serialize instead of
--    deadlocking. Flag changes lock only the mailbox row.
--  * CONDSTORE/QRESYNC (RFC 7162): every change to a mailbox takes
--    highestmodseq + 1 under the mailbox row lock and stamps the changed rows with
--    it, so modseqs are strictly increasing in commit order per mailbox. UIDs come
--    from uidnext under the same lock: strictly increasing, never reused.
--  * Counters (mailbox message/unseen/deleted/bytes, account usage, blob refcount)
--    are kept by statement-level triggers on messages (transition tables), in the
--    same transaction as the change, whatever path changed the rows (a function, an
--    admin DELETE, an ON DELETE CASCADE). STATUS never scans.
--  * Change notifications: pg_notify('mail_changes',
--    '<account_id>:<mailbox_id>:<event>:<uids>:<modseq>'), sent at commit. Events:
--    new, flags, expunge (uids as an IMAP uid set "1:3,7", or "*" when too long:
--    resync the mailbox), mailbox (mailbox list changed; mailbox_id 0 = several).
--  * Error codes: SQLSTATE class ML (router/migrate.h): ML001 over quota, ML002 no
--    such mailbox, ML003 mailbox exists, ML004 cannot (INBOX delete, rename into
--    itself, cross-account), ML005 invalid argument, ML006 no such account.
--  * IMAP strings computed at delivery (envelope, body, bodystructure) are bytea:
--    they are byte-exact protocol text and may hold 8-bit bytes that are not UTF-8.
--    Search fields are decoded UTF-8 text.

-- ------------------------------------------------------------------ addressing

CREATE TABLE domains (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name text NOT NULL UNIQUE CHECK (name <> '' AND name = lower(name)),
	created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	domain_id bigint NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
	address text NOT NULL UNIQUE CHECK (address = lower(address) AND address ~ '^[^@]+@[^@]+$'),
	-- Argon2id PHC string ($argon2id$v=19$...), or imported {SHA512-CRYPT}/{BLF-CRYPT}
	-- crypt(3) hashes (Dovecot style); the router tells them apart by the prefix
	password_hash text NOT NULL,
	quota_bytes bigint NOT NULL DEFAULT 0 CHECK (quota_bytes >= 0),	-- 0 = unlimited
	quota_messages bigint NOT NULL DEFAULT 0 CHECK (quota_messages >= 0),	-- 0 = unlimited
	used_bytes bigint NOT NULL DEFAULT 0,
	used_messages bigint NOT NULL DEFAULT 0,
	disabled boolean NOT NULL DEFAULT false,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX accounts_domain ON accounts (domain_id);

-- aliases: 'local@domain', or '@domain' for the domain's catch-all
CREATE TABLE aliases (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	domain_id bigint NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
	address text NOT NULL UNIQUE CHECK (address = lower(address) AND address ~ '^[^@]*@[^@]+$'),
	targets text[] NOT NULL CHECK (cardinality(targets) > 0),
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX aliases_domain ON aliases (domain_id);

-- ------------------------------------------------------------------ mailboxes

-- UIDVALIDITY source: a sequence started at the clock (unix seconds) when the schema
-- was created, so values only grow, and a mailbox deleted and created again under the
-- same name always gets a new UIDVALIDITY (RFC 9051 2.3.1.1). 32-bit: ~2.5e9 left.
CREATE SEQUENCE mailbox_uidvalidity_seq MINVALUE 1 MAXVALUE 4294967295;
SELECT setval('mailbox_uidvalidity_seq', extract(epoch FROM now())::bigint);

CREATE TABLE mailboxes (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
	-- UTF-8, '/' is the hierarchy separator; INBOX is stored as 'INBOX'
	name text NOT NULL,
	uidvalidity bigint NOT NULL DEFAULT nextval('mailbox_uidvalidity_seq')
		CHECK (uidvalidity BETWEEN 1 AND 4294967295),
	uidnext bigint NOT NULL DEFAULT 1 CHECK (uidnext BETWEEN 1 AND 4294967296),
	highestmodseq bigint NOT NULL DEFAULT 1 CHECK (highestmodseq >= 1),
	-- IMAP4rev1 \Recent: the first read-write SELECT claims uids >= first_recent_uid
	first_recent_uid bigint NOT NULL DEFAULT 1,
	special_use text[] NOT NULL DEFAULT '{}'
		CHECK (special_use <@ ARRAY['\All', '\Archive', '\Drafts', '\Flagged', '\Junk', '\Sent', '\Trash']),
	subscribed boolean NOT NULL DEFAULT false,
	-- exact counters, maintained by the triggers on messages
	message_count bigint NOT NULL DEFAULT 0,
	unseen_count bigint NOT NULL DEFAULT 0,
	deleted_count bigint NOT NULL DEFAULT 0,
	total_bytes bigint NOT NULL DEFAULT 0,
	created_at timestamptz NOT NULL DEFAULT now(),
	UNIQUE (account_id, name),
	CHECK (name <> '' AND name !~ '(^/|/$|//)' AND name !~ '[\x01-\x1f\x7f]'
		AND octet_length(name) <= 1000),
	CHECK (upper(split_part(name, '/', 1)) <> 'INBOX' OR split_part(name, '/', 1) = 'INBOX')
);

-- ------------------------------------------------------------------ blobs

-- One row per stored body (content-addressed). refcount counts the messages rows and
-- outbound_queue rows that use it (kept by triggers). At 0, unreferenced_since is set
-- and the GC deletes the blob after a grace period (mail_blob_gc). A delivery calls
-- mail_blob_prepare() BEFORE uploading the body, which refreshes unreferenced_since,
-- so the GC never removes a blob that a delivery in progress is about to reference.
CREATE TABLE blobs (
	id text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{64}$'),	-- hex SHA-256
	size bigint NOT NULL CHECK (size >= 0),
	refcount bigint NOT NULL DEFAULT 0 CHECK (refcount >= 0),
	nodes text[] NOT NULL DEFAULT '{}',	-- store nodes holding a copy
	created_at timestamptz NOT NULL DEFAULT now(),
	unreferenced_since timestamptz DEFAULT now()
);
CREATE INDEX blobs_unreferenced ON blobs (unreferenced_since) WHERE refcount = 0;

-- full-text search of bodies, shared by every copy of the same blob
CREATE TABLE message_text (
	blob_id text PRIMARY KEY REFERENCES blobs (id) ON DELETE CASCADE,
	tsv tsvector NOT NULL
);
CREATE INDEX message_text_tsv ON message_text USING gin (tsv);

-- ------------------------------------------------------------------ messages

CREATE TABLE messages (
	mailbox_id bigint NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
	uid bigint NOT NULL CHECK (uid BETWEEN 1 AND 4294967295),
	modseq bigint NOT NULL CHECK (modseq >= 1),
	-- \Seen 1, \Answered 2, \Flagged 4, \Deleted 8, \Draft 16
	flags integer NOT NULL DEFAULT 0 CHECK (flags BETWEEN 0 AND 31),
	keywords text[] NOT NULL DEFAULT '{}',	-- sorted, distinct
	internal_date timestamptz NOT NULL,
	saved_at timestamptz NOT NULL DEFAULT now(),
	size bigint NOT NULL CHECK (size >= 0),
	blob_id text NOT NULL REFERENCES blobs (id),
	-- IMAP strings computed once at delivery (router/mime.h exporters)
	envelope bytea NOT NULL,
	body bytea NOT NULL,		-- BODY (non-extensible)
	bodystructure bytea NOT NULL,
	header_block bytea NOT NULL,	-- the raw header: HEADER.FIELDS without a blob read
	part_map bytea,			-- section -> offsets (mime_sections_export)
	-- SEARCH / SORT / THREAD fields, RFC 2047-decoded UTF-8
	subject text,
	base_subject text,		-- RFC 5256 base subject, for SORT SUBJECT and THREAD
	from_addr text,
	to_addr text,
	cc_addr text,
	bcc_addr text,
	sort_from text,			-- RFC 5256: addr-mailbox of the first address
	sort_to text,
	sort_cc text,
	sent_date timestamptz,
	message_id text,
	in_reply_to text,
	references_hdr text,
	PRIMARY KEY (mailbox_id, uid)
);
CREATE INDEX messages_modseq ON messages (mailbox_id, modseq);
CREATE INDEX messages_blob ON messages (blob_id);

-- QRESYNC VANISHED (RFC 7162 3.2.10): expunged uids with the modseq of the expunge
CREATE TABLE expunged (
	mailbox_id bigint NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
	uid bigint NOT NULL,
	modseq bigint NOT NULL,
	PRIMARY KEY (mailbox_id, uid)
);
CREATE INDEX expunged_modseq ON expunged (mailbox_id, modseq);

-- ------------------------------------------------------------------ delivery, queue

-- idempotency: a Deliver retried after a failover with the same token returns the
-- first attempt's result instead of delivering twice (mail_housekeep prunes)
CREATE TABLE delivery_tokens (
	token text PRIMARY KEY,
	result jsonb,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX delivery_tokens_created ON delivery_tokens (created_at);

-- outbound SMTP queue, one row per recipient; runners in every router claim due rows
-- with FOR UPDATE SKIP LOCKED (mail_queue_claim) under a lease
CREATE TABLE outbound_queue (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	blob_id text NOT NULL REFERENCES blobs (id),
	account_id bigint REFERENCES accounts (id) ON DELETE SET NULL,	-- submitter
	mail_from text NOT NULL,	-- '' = null reverse-path (never bounced)
	rcpt text NOT NULL,
	domain text NOT NULL,		-- of rcpt: per-destination limits and grouping
	size bigint NOT NULL DEFAULT 0,
	envid text,			-- DSN (RFC 3461)
	ret text CHECK (ret IN ('FULL', 'HDRS')),
	notify text,			-- 'NEVER' or a list of SUCCESS,FAILURE,DELAY
	orcpt text,
	attempts integer NOT NULL DEFAULT 0,
	next_attempt_at timestamptz NOT NULL DEFAULT now(),
	expires_at timestamptz NOT NULL DEFAULT now() + interval '5 days',
	last_error text,
	status text NOT NULL DEFAULT 'queued'
		CHECK (status IN ('queued', 'sending', 'delivered', 'bounced', 'expired')),
	claimed_by text,
	claimed_until timestamptz,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbound_queue_due ON outbound_queue (next_attempt_at) WHERE status = 'queued';
CREATE INDEX outbound_queue_leased ON outbound_queue (claimed_until) WHERE status = 'sending';
CREATE INDEX outbound_queue_blob ON outbound_queue (blob_id);

-- ------------------------------------------------------------------ sessions

-- POP3 exclusive maildrop lock: a lease, renewed while the session lives
CREATE TABLE maildrop_locks (
	account_id bigint PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
	holder text NOT NULL,
	expires_at timestamptz NOT NULL
);

-- authentication failures counted across routers (keys like 'acct:<id>', 'ip:<addr>')
CREATE TABLE auth_failures (
	key text PRIMARY KEY,
	window_start timestamptz NOT NULL,
	count integer NOT NULL
);

-- ------------------------------------------------------------------ helpers

-- mail_kw_norm - keywords as stored: distinct, sorted, no empties
CREATE FUNCTION mail_kw_norm(p text[]) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
	SELECT coalesce(array_agg(DISTINCT k ORDER BY k), '{}')
	FROM unnest(p) AS k WHERE k IS NOT NULL AND k <> ''
$$;

-- mail_uidset - uids as an IMAP uid set ("1:3,7"), '' for none
CREATE FUNCTION mail_uidset(p_uids bigint[]) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
	SELECT coalesce(string_agg(CASE WHEN lo = hi THEN lo::text ELSE lo || ':' || hi END,
				   ',' ORDER BY lo), '')
	FROM (SELECT min(u) AS lo, max(u) AS hi
	      FROM (SELECT u, u - row_number() OVER (ORDER BY u) AS g
		    FROM (SELECT DISTINCT unnest(p_uids) AS u) AS d) AS x
	      GROUP BY g) AS r
$$;

-- mail_notify - one change event on channel mail_changes (sent at commit)
CREATE FUNCTION mail_notify(p_account bigint, p_mailbox bigint, p_event text,
			    p_uids text, p_modseq bigint) RETURNS void
LANGUAGE sql AS $$
	SELECT pg_notify('mail_changes', p_account || ':' || p_mailbox || ':' || p_event || ':'
			 || CASE WHEN length(p_uids) > 7000 THEN '*' ELSE coalesce(p_uids, '') END
			 || ':' || coalesce(p_modseq, 0))
$$;

-- mail_mailbox_name - a mailbox name as stored (INBOX's first component upper-cased)
-- or ML005 for a name that cannot exist
CREATE FUNCTION mail_mailbox_name(p_name text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
	v text := p_name;
BEGIN
	IF v IS NULL OR v = '' OR v ~ '(^/|/$|//)' OR v ~ '[\x01-\x1f\x7f]' OR octet_length(v) > 1000 THEN
		RAISE EXCEPTION 'invalid mailbox name' USING ERRCODE = 'ML005';
	END IF;
	IF upper(split_part(v, '/', 1)) = 'INBOX' THEN
		v := 'INBOX' || substr(v, 6);
	END IF;
	RETURN v;
END $$;

-- mail_blob_refs - add delta to the refcount of each blob id listed (an id listed n
-- times gets n * delta); rows are locked in id order so that concurrent statements
-- never deadlock on blobs
CREATE FUNCTION mail_blob_refs(p_ids text[], p_delta integer) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	IF p_ids IS NULL OR cardinality(p_ids) = 0 THEN
		RETURN;
	END IF;
	PERFORM 1 FROM blobs WHERE id = ANY (p_ids) ORDER BY id FOR UPDATE;
	UPDATE blobs b
	SET refcount = b.refcount + p_delta * c.n,
	    unreferenced_since = CASE WHEN b.refcount + p_delta * c.n = 0 THEN now() END
	FROM (SELECT id, count(*) AS n FROM unnest(p_ids) AS id GROUP BY id) AS c
	WHERE b.id = c.id;
END $$;

-- mail_lock_account_of - lock the account owning a mailbox (lock order: account
-- first); returns the account id, ML002 if the mailbox does not exist
CREATE FUNCTION mail_lock_account_of(p_mailbox_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	v_acct bigint;
BEGIN
	SELECT account_id INTO v_acct FROM mailboxes WHERE id = p_mailbox_id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no such mailbox: %', p_mailbox_id USING ERRCODE = 'ML002';
	END IF;
	PERFORM 1 FROM accounts WHERE id = v_acct FOR UPDATE;
	RETURN v_acct;
END $$;

-- ------------------------------------------------------------------ counters (triggers)

CREATE FUNCTION messages_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE mailboxes mb
	SET message_count = mb.message_count + n.cnt,
	    unseen_count = mb.unseen_count + n.unseen,
	    deleted_count = mb.deleted_count + n.deleted,
	    total_bytes = mb.total_bytes + n.bytes
	FROM (SELECT mailbox_id, count(*) AS cnt,
		     count(*) FILTER (WHERE flags & 1 = 0) AS unseen,
		     count(*) FILTER (WHERE flags & 8 <> 0) AS deleted,
		     sum(size) AS bytes
	      FROM new_rows GROUP BY mailbox_id) AS n
	WHERE mb.id = n.mailbox_id;
	UPDATE accounts a
	SET used_bytes = a.used_bytes + n.bytes, used_messages = a.used_messages + n.cnt
	FROM (SELECT mb.account_id, count(*) AS cnt, sum(r.size) AS bytes
	      FROM new_rows r JOIN mailboxes mb ON mb.id = r.mailbox_id
	      GROUP BY mb.account_id) AS n
	WHERE a.id = n.account_id;
	PERFORM mail_blob_refs(ARRAY(SELECT blob_id FROM new_rows), 1);
	RETURN NULL;
END $$;

CREATE FUNCTION messages_after_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	-- mailbox and account rows that are being deleted themselves are not found: fine
	UPDATE mailboxes mb
	SET message_count = mb.message_count - n.cnt,
	    unseen_count = mb.unseen_count - n.unseen,
	    deleted_count = mb.deleted_count - n.deleted,
	    total_bytes = mb.total_bytes - n.bytes
	FROM (SELECT mailbox_id, count(*) AS cnt,
		     count(*) FILTER (WHERE flags & 1 = 0) AS unseen,
		     count(*) FILTER (WHERE flags & 8 <> 0) AS deleted,
		     sum(size) AS bytes
	      FROM old_rows GROUP BY mailbox_id) AS n
	WHERE mb.id = n.mailbox_id;
	UPDATE accounts a
	SET used_bytes = a.used_bytes - n.bytes, used_messages = a.used_messages - n.cnt
	FROM (SELECT mb.account_id, count(*) AS cnt, sum(r.size) AS bytes
	      FROM old_rows r JOIN mailboxes mb ON mb.id = r.mailbox_id
	      GROUP BY mb.account_id) AS n
	WHERE a.id = n.account_id;
	PERFORM mail_blob_refs(ARRAY(SELECT blob_id FROM old_rows), -1);
	RETURN NULL;
END $$;

CREATE FUNCTION messages_after_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	-- only flags change in place (a move is an insert plus a delete)
	UPDATE mailboxes mb
	SET unseen_count = mb.unseen_count + d.unseen,
	    deleted_count = mb.deleted_count + d.deleted
	FROM (SELECT n.mailbox_id,
		     sum((n.flags & 1 = 0)::int - (o.flags & 1 = 0)::int) AS unseen,
		     sum((n.flags & 8 <> 0)::int - (o.flags & 8 <> 0)::int) AS deleted
	      FROM new_rows n JOIN old_rows o USING (mailbox_id, uid)
	      GROUP BY n.mailbox_id) AS d
	WHERE mb.id = d.mailbox_id AND (d.unseen <> 0 OR d.deleted <> 0);
	RETURN NULL;
END $$;

CREATE TRIGGER messages_ai AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION messages_after_insert();
CREATE TRIGGER messages_ad AFTER DELETE ON messages REFERENCING OLD TABLE AS old_rows
	FOR EACH STATEMENT EXECUTE FUNCTION messages_after_delete();
CREATE TRIGGER messages_au AFTER UPDATE ON messages
	REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION messages_after_update();

CREATE FUNCTION queue_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM mail_blob_refs(ARRAY(SELECT blob_id FROM new_rows), 1);
	RETURN NULL;
END $$;

CREATE FUNCTION queue_after_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM mail_blob_refs(ARRAY(SELECT blob_id FROM old_rows), -1);
	RETURN NULL;
END $$;

CREATE TRIGGER outbound_queue_ai AFTER INSERT ON outbound_queue REFERENCING NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION queue_after_insert();
CREATE TRIGGER outbound_queue_ad AFTER DELETE ON outbound_queue REFERENCING OLD TABLE AS old_rows
	FOR EACH STATEMENT EXECUTE FUNCTION queue_after_delete();

-- every account has an INBOX from the start
CREATE FUNCTION accounts_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO mailboxes (account_id, name, subscribed)
	SELECT id, 'INBOX', true FROM new_rows
	ON CONFLICT (account_id, name) DO NOTHING;
	RETURN NULL;
END $$;

CREATE TRIGGER accounts_ai AFTER INSERT ON accounts REFERENCING NEW TABLE AS new_rows
	FOR EACH STATEMENT EXECUTE FUNCTION accounts_after_insert();

-- ------------------------------------------------------------------ addressing

-- mail_lookup_recipient - one round trip for RCPT TO: kind is 'account' (enabled
-- account), 'disabled', 'alias' (exact alias, or the domain's catch-all '@domain'),
-- 'unknown' (local domain, nobody there) or 'remote' (not a local domain)
CREATE FUNCTION mail_lookup_recipient(p_address text)
RETURNS TABLE (kind text, account_id bigint, targets text[])
LANGUAGE plpgsql STABLE AS $$
DECLARE
	v_addr text := lower(p_address);
	v_domain text := lower(regexp_replace(p_address, '^.*@', ''));
	v_id bigint;
	v_disabled boolean;
	v_targets text[];
BEGIN
	SELECT a.id, a.disabled INTO v_id, v_disabled FROM accounts a WHERE a.address = v_addr;
	IF FOUND THEN
		RETURN QUERY SELECT CASE WHEN v_disabled THEN 'disabled' ELSE 'account' END, v_id, NULL::text[];
		RETURN;
	END IF;
	SELECT al.targets INTO v_targets FROM aliases al WHERE al.address = v_addr;
	IF FOUND THEN
		RETURN QUERY SELECT 'alias', NULL::bigint, v_targets;
		RETURN;
	END IF;
	IF NOT EXISTS (SELECT 1 FROM domains d WHERE d.name = v_domain) THEN
		RETURN QUERY SELECT 'remote', NULL::bigint, NULL::text[];
		RETURN;
	END IF;
	SELECT al.targets INTO v_targets FROM aliases al WHERE al.address = '@' || v_domain;
	IF FOUND THEN
		RETURN QUERY SELECT 'alias', NULL::bigint, v_targets;
		RETURN;
	END IF;
	RETURN QUERY SELECT 'unknown', NULL::bigint, NULL::text[];
END $$;

-- ------------------------------------------------------------------ blobs

-- mail_blob_prepare - call BEFORE uploading a body to the store nodes: creates the
-- row, or refreshes an unreferenced one's grace period, so that the GC cannot delete
-- the blob between the upload and the delivery that references it
CREATE FUNCTION mail_blob_prepare(p_blob_id text, p_size bigint) RETURNS void
LANGUAGE sql AS $$
	INSERT INTO blobs (id, size) VALUES (p_blob_id, p_size)
	ON CONFLICT (id) DO UPDATE
	SET unreferenced_since = CASE WHEN blobs.refcount = 0 THEN now() END
$$;

-- mail_blob_gc - delete up to p_limit blob rows unreferenced for longer than p_grace
-- (rows in use by another GC are skipped); the caller then deletes the bodies on the
-- nodes returned
CREATE FUNCTION mail_blob_gc(p_grace interval, p_limit integer)
RETURNS TABLE (blob_id text, nodes text[])
LANGUAGE sql AS $$
	DELETE FROM blobs b
	WHERE b.id IN (SELECT id FROM blobs
		       WHERE refcount = 0 AND unreferenced_since < now() - p_grace
		       ORDER BY unreferenced_since LIMIT p_limit
		       FOR UPDATE SKIP LOCKED)
	  AND b.refcount = 0
	RETURNING b.id, b.nodes
$$;

-- ------------------------------------------------------------------ delivery

-- mail_deliver - deliver one stored blob to a set of accounts (SMTP final delivery,
-- IMAP APPEND with one account): per account, a new message in mailbox p_mailbox
-- (INBOX is created if missing) with the next UID and a new MODSEQ, quota checked,
-- counters, blob refcount and a 'new' notification. One row per distinct account:
-- status 'ok' (mailbox_id, uidvalidity, uid, modseq set), 'over_quota', 'disabled',
-- 'no_account' or 'no_mailbox'. p_meta holds the IMAP strings and search fields:
-- envelope, body, bodystructure (base64), part_map (base64), subject, base_subject,
-- from, to, cc, bcc, sort_from, sort_to, sort_cc, sent_date (ISO 8601),
-- message_id, in_reply_to, references. With a token, a retry returns the first
-- attempt's rows instead of delivering again.
CREATE FUNCTION mail_deliver(p_account_ids bigint[], p_mailbox text, p_blob_id text,
			     p_size bigint, p_internal_date timestamptz, p_flags integer,
			     p_keywords text[], p_meta jsonb, p_header_block bytea,
			     p_body_text text, p_nodes text[], p_token text)
RETURNS TABLE (account_id bigint, status text, mailbox_id bigint, uidvalidity bigint,
	       uid bigint, modseq bigint)
LANGUAGE plpgsql AS $$
DECLARE
	v_mailbox text := mail_mailbox_name(coalesce(p_mailbox, 'INBOX'));
	v_kw text[] := mail_kw_norm(p_keywords);
	v_res jsonb := '[]';
	v_acct record;
	v_id bigint;
	v_mb bigint;
	v_uidv bigint;
	v_uid bigint;
	v_modseq bigint;
	v_mbs bigint[] := '{}';
	v_uids bigint[] := '{}';
	v_modseqs bigint[] := '{}';
BEGIN
	IF p_token IS NOT NULL THEN
		INSERT INTO delivery_tokens (token) VALUES (p_token) ON CONFLICT (token) DO NOTHING;
		IF NOT FOUND THEN
			-- a concurrent first attempt has committed (or we would have waited for it)
			RETURN QUERY SELECT x.account_id, x.status, x.mailbox_id, x.uidvalidity, x.uid, x.modseq
				FROM delivery_tokens t,
				     jsonb_to_recordset(t.result) AS x(account_id bigint, status text,
					mailbox_id bigint, uidvalidity bigint, uid bigint, modseq bigint)
				WHERE t.token = p_token;
			RETURN;
		END IF;
	END IF;
	IF coalesce(p_flags, 0) NOT BETWEEN 0 AND 31 THEN
		RAISE EXCEPTION 'invalid flags %', p_flags USING ERRCODE = 'ML005';
	END IF;

	-- lock order: accounts (by id), then mailboxes, then the blob
	PERFORM 1 FROM accounts a WHERE a.id = ANY (p_account_ids) ORDER BY a.id FOR UPDATE;
	FOR v_id IN SELECT DISTINCT x FROM unnest(p_account_ids) AS x WHERE x IS NOT NULL ORDER BY x LOOP
		SELECT a.disabled, a.quota_bytes, a.quota_messages, a.used_bytes, a.used_messages
			INTO v_acct FROM accounts a WHERE a.id = v_id;
		IF NOT FOUND THEN
			v_res := v_res || jsonb_build_object('account_id', v_id, 'status', 'no_account');
			CONTINUE;
		END IF;
		IF v_acct.disabled THEN
			v_res := v_res || jsonb_build_object('account_id', v_id, 'status', 'disabled');
			CONTINUE;
		END IF;
		IF (v_acct.quota_bytes > 0 AND v_acct.used_bytes + p_size > v_acct.quota_bytes)
		   OR (v_acct.quota_messages > 0 AND v_acct.used_messages + 1 > v_acct.quota_messages) THEN
			v_res := v_res || jsonb_build_object('account_id', v_id, 'status', 'over_quota');
			CONTINUE;
		END IF;
		IF v_mailbox = 'INBOX' THEN
			INSERT INTO mailboxes (account_id, name, subscribed) VALUES (v_id, 'INBOX', true)
			ON CONFLICT ON CONSTRAINT mailboxes_account_id_name_key DO NOTHING;
		END IF;
		UPDATE mailboxes mb SET uidnext = mb.uidnext + 1, highestmodseq = mb.highestmodseq + 1
		WHERE mb.account_id = v_id AND mb.name = v_mailbox
		RETURNING mb.id, mb.uidvalidity, mb.uidnext - 1, mb.highestmodseq
		INTO v_mb, v_uidv, v_uid, v_modseq;
		IF NOT FOUND THEN
			v_res := v_res || jsonb_build_object('account_id', v_id, 'status', 'no_mailbox');
			CONTINUE;
		END IF;
		v_mbs := v_mbs || v_mb;
		v_uids := v_uids || v_uid;
		v_modseqs := v_modseqs || v_modseq;
		v_res := v_res || jsonb_build_object('account_id', v_id, 'status', 'ok',
			'mailbox_id', v_mb, 'uidvalidity', v_uidv, 'uid', v_uid, 'modseq', v_modseq);
		PERFORM mail_notify(v_id, v_mb, 'new', v_uid::text, v_modseq);
	END LOOP;

	IF cardinality(v_mbs) > 0 THEN
		INSERT INTO blobs (id, size, nodes) VALUES (p_blob_id, p_size, coalesce(p_nodes, '{}'))
		ON CONFLICT (id) DO UPDATE
		SET nodes = ARRAY(SELECT DISTINCT n FROM unnest(blobs.nodes || EXCLUDED.nodes) AS n ORDER BY n);
		IF p_body_text IS NOT NULL THEN
			INSERT INTO message_text (blob_id, tsv)
			VALUES (p_blob_id, to_tsvector('simple', left(p_body_text, 500000)))
			ON CONFLICT (blob_id) DO NOTHING;
		END IF;
		-- one statement for every copy: the counter triggers run once
		INSERT INTO messages (mailbox_id, uid, modseq, flags, keywords, internal_date, size,
				      blob_id, envelope, body, bodystructure, header_block, part_map,
				      subject, base_subject, from_addr, to_addr, cc_addr, bcc_addr,
				      sort_from, sort_to, sort_cc, sent_date, message_id, in_reply_to,
				      references_hdr)
		SELECT d.mb, d.uid, d.modseq, coalesce(p_flags, 0), v_kw,
		       coalesce(p_internal_date, now()), p_size, p_blob_id,
		       decode(coalesce(p_meta->>'envelope', ''), 'base64'),
		       decode(coalesce(p_meta->>'body', ''), 'base64'),
		       decode(coalesce(p_meta->>'bodystructure', ''), 'base64'),
		       coalesce(p_header_block, ''::bytea),
		       decode(p_meta->>'part_map', 'base64'),
		       p_meta->>'subject', p_meta->>'base_subject', p_meta->>'from', p_meta->>'to',
		       p_meta->>'cc', p_meta->>'bcc', p_meta->>'sort_from', p_meta->>'sort_to',
		       p_meta->>'sort_cc', (p_meta->>'sent_date')::timestamptz, p_meta->>'message_id',
		       p_meta->>'in_reply_to', p_meta->>'references'
		FROM unnest(v_mbs, v_uids, v_modseqs) AS d(mb, uid, modseq);
	END IF;

	IF p_token IS NOT NULL THEN
		UPDATE delivery_tokens SET result = v_res WHERE token = p_token;
	END IF;
	RETURN QUERY SELECT x.account_id, x.status, x.mailbox_id, x.uidvalidity, x.uid, x.modseq
		FROM jsonb_to_recordset(v_res) AS x(account_id bigint, status text, mailbox_id bigint,
						    uidvalidity bigint, uid bigint, modseq bigint);
END $$;

-- ------------------------------------------------------------------ flags

-- mail_store_flags - IMAP STORE / UID STORE with CONDSTORE (RFC 7162 3.1.3).
-- p_mode: 'set' (FLAGS), 'add' (+FLAGS), 'remove' (-FLAGS). Messages whose flags
-- actually change get one new modseq (the mailbox's highestmodseq + 1); a message
-- whose modseq is above p_unchanged_since is left alone and reported 'modified'.
-- One row per message in the set: status 'changed', 'unchanged' or 'modified',
-- with its (new) modseq, flags and keywords.
CREATE FUNCTION mail_store_flags(p_mailbox_id bigint, p_uids int8multirange, p_mode text,
				 p_flags integer, p_keywords text[], p_unchanged_since bigint)
RETURNS TABLE (uid bigint, modseq bigint, flags integer, keywords text[], status text)
LANGUAGE plpgsql AS $$
DECLARE
	v_acct bigint;
	v_modseq bigint;
	v_kw text[] := mail_kw_norm(p_keywords);
	v_flags integer := coalesce(p_flags, 0);
	v_changed bigint[];
BEGIN
	IF p_mode IS NULL OR p_mode NOT IN ('set', 'add', 'remove') OR v_flags NOT BETWEEN 0 AND 31 THEN
		RAISE EXCEPTION 'invalid store mode % or flags %', p_mode, p_flags USING ERRCODE = 'ML005';
	END IF;
	SELECT mb.account_id, mb.highestmodseq + 1 INTO v_acct, v_modseq
	FROM mailboxes mb WHERE mb.id = p_mailbox_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no such mailbox: %', p_mailbox_id USING ERRCODE = 'ML002';
	END IF;

	WITH t AS (
		SELECT m.uid AS t_uid, m.flags AS old_flags, m.keywords AS old_kw,
		       CASE p_mode WHEN 'set' THEN v_flags
				   WHEN 'add' THEN m.flags | v_flags
				   ELSE m.flags & ~v_flags END AS nf,
		       CASE p_mode WHEN 'set' THEN v_kw
				   WHEN 'add' THEN mail_kw_norm(m.keywords || v_kw)
				   ELSE ARRAY(SELECT k FROM unnest(m.keywords) AS k
					      WHERE NOT k = ANY (v_kw) ORDER BY k) END AS nk
		FROM messages m
		WHERE m.mailbox_id = p_mailbox_id
		  AND m.uid >= lower(p_uids) AND m.uid < upper(p_uids) AND m.uid <@ p_uids
		  AND (p_unchanged_since IS NULL OR m.modseq <= p_unchanged_since)
	), u AS (
		UPDATE messages m SET flags = t.nf, keywords = t.nk, modseq = v_modseq
		FROM t
		WHERE m.mailbox_id = p_mailbox_id AND m.uid = t.t_uid
		  AND (t.nf <> t.old_flags OR t.nk <> t.old_kw)
		RETURNING m.uid
	)
	SELECT array_agg(u.uid) INTO v_changed FROM u;

	IF v_changed IS NOT NULL THEN
		UPDATE mailboxes SET highestmodseq = v_modseq WHERE id = p_mailbox_id;
		PERFORM mail_notify(v_acct, p_mailbox_id, 'flags', mail_uidset(v_changed), v_modseq);
	END IF;

	RETURN QUERY
	SELECT m.uid, m.modseq, m.flags, m.keywords,
	       CASE WHEN m.uid = ANY (coalesce(v_changed, '{}')) THEN 'changed'
		    WHEN p_unchanged_since IS NOT NULL AND m.modseq > p_unchanged_since THEN 'modified'
		    ELSE 'unchanged' END
	FROM messages m
	WHERE m.mailbox_id = p_mailbox_id
	  AND m.uid >= lower(p_uids) AND m.uid < upper(p_uids) AND m.uid <@ p_uids
	ORDER BY m.uid;
END $$;

-- ------------------------------------------------------------------ expunge

-- mail_expunge_uids - remove the given uids of a locked mailbox: expunged rows for
-- VANISHED, one new modseq, a notification (internal: callers hold the locks)
CREATE FUNCTION mail_expunge_uids(p_account_id bigint, p_mailbox_id bigint, p_uids bigint[])
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	v_modseq bigint;
BEGIN
	UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = p_mailbox_id
	RETURNING highestmodseq INTO v_modseq;
	DELETE FROM messages WHERE mailbox_id = p_mailbox_id AND uid = ANY (p_uids);
	INSERT INTO expunged (mailbox_id, uid, modseq)
	SELECT p_mailbox_id, u, v_modseq FROM unnest(p_uids) AS u
	ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = EXCLUDED.modseq;
	PERFORM mail_notify(p_account_id, p_mailbox_id, 'expunge', mail_uidset(p_uids), v_modseq);
	RETURN v_modseq;
END $$;

-- mail_expunge - EXPUNGE (p_uids NULL) / UID EXPUNGE (p_uids): remove the \Deleted
-- messages (every message of the set when p_only_deleted is false: POP3 DELE+QUIT).
-- Returns the expunged uids, ascending, with the expunge's modseq. Blob refcounts,
-- counters and quota usage follow through the triggers.
CREATE FUNCTION mail_expunge(p_mailbox_id bigint, p_uids int8multirange DEFAULT NULL,
			     p_only_deleted boolean DEFAULT true)
RETURNS TABLE (uid bigint, modseq bigint)
LANGUAGE plpgsql AS $$
DECLARE
	v_acct bigint := mail_lock_account_of(p_mailbox_id);
	v_uids bigint[];
	v_modseq bigint;
BEGIN
	PERFORM 1 FROM mailboxes WHERE id = p_mailbox_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no such mailbox: %', p_mailbox_id USING ERRCODE = 'ML002';
	END IF;
	SELECT array_agg(m.uid ORDER BY m.uid) INTO v_uids
	FROM messages m
	WHERE m.mailbox_id = p_mailbox_id
	  AND (p_uids IS NULL OR (m.uid >= lower(p_uids) AND m.uid < upper(p_uids) AND m.uid <@ p_uids))
	  AND (NOT coalesce(p_only_deleted, true) OR m.flags & 8 <> 0);
	IF v_uids IS NULL THEN
		RETURN;
	END IF;
	v_modseq := mail_expunge_uids(v_acct, p_mailbox_id, v_uids);
	RETURN QUERY SELECT u, v_modseq FROM unnest(v_uids) AS u ORDER BY u;
END $$;

-- mail_vanished - QRESYNC: uids expunged after modseq p_since (VANISHED (EARLIER))
CREATE FUNCTION mail_vanished(p_mailbox_id bigint, p_since bigint) RETURNS text
LANGUAGE sql STABLE AS $$
	SELECT mail_uidset(ARRAY(SELECT e.uid FROM expunged e
				 WHERE e.mailbox_id = p_mailbox_id AND e.modseq > p_since))
$$;

-- ------------------------------------------------------------------ copy / move

-- mail_copy_move - COPY / MOVE (RFC 6851) of a uid set to another mailbox of the same
-- account. New uids in the destination are consecutive, in source uid order
-- (COPYUID, RFC 4315), with one new destination modseq; a move expunges the sources
-- (one new source modseq, VANISHED rows). A copy checks the quota (ML001).
CREATE FUNCTION mail_copy_move(p_src bigint, p_uids int8multirange, p_dst bigint, p_move boolean)
RETURNS TABLE (src_uid bigint, dst_uid bigint, uidvalidity bigint, modseq bigint)
LANGUAGE plpgsql AS $$
DECLARE
	v_acct bigint := mail_lock_account_of(p_src);
	v_dst_acct bigint;
	v_src_uids bigint[];
	v_n bigint;
	v_bytes bigint;
	v_first bigint;
	v_uidv bigint;
	v_modseq bigint;
	v_quota record;
BEGIN
	SELECT account_id INTO v_dst_acct FROM mailboxes WHERE id = p_dst;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no such mailbox: %', p_dst USING ERRCODE = 'ML002';
	END IF;
	IF v_dst_acct <> v_acct THEN
		RAISE EXCEPTION 'mailboxes % and % belong to different accounts', p_src, p_dst
			USING ERRCODE = 'ML004';
	END IF;
	PERFORM 1 FROM mailboxes WHERE id IN (p_src, p_dst) ORDER BY id FOR UPDATE;

	SELECT array_agg(m.uid ORDER BY m.uid), count(*), coalesce(sum(m.size), 0)
	INTO v_src_uids, v_n, v_bytes
	FROM messages m
	WHERE m.mailbox_id = p_src
	  AND m.uid >= lower(p_uids) AND m.uid < upper(p_uids) AND m.uid <@ p_uids;
	IF v_n = 0 THEN
		RETURN;
	END IF;
	IF NOT p_move THEN
		SELECT quota_bytes, quota_messages, used_bytes, used_messages INTO v_quota
		FROM accounts WHERE id = v_acct;
		IF (v_quota.quota_bytes > 0 AND v_quota.used_bytes + v_bytes > v_quota.quota_bytes)
		   OR (v_quota.quota_messages > 0 AND v_quota.used_messages + v_n > v_quota.quota_messages) THEN
			RAISE EXCEPTION 'over quota' USING ERRCODE = 'ML001';
		END IF;
	END IF;

	UPDATE mailboxes SET uidnext = uidnext + v_n, highestmodseq = highestmodseq + 1
	WHERE id = p_dst
	RETURNING uidnext - v_n, mailboxes.uidvalidity, highestmodseq INTO v_first, v_uidv, v_modseq;

	INSERT INTO messages (mailbox_id, uid, modseq, flags, keywords, internal_date, saved_at, size,
			      blob_id, envelope, body, bodystructure, header_block, part_map,
			      subject, base_subject, from_addr, to_addr, cc_addr, bcc_addr,
			      sort_from, sort_to, sort_cc, sent_date, message_id, in_reply_to,
			      references_hdr)
	SELECT p_dst, v_first + s.rn - 1, v_modseq, m.flags, m.keywords, m.internal_date, now(), m.size,
	       m.blob_id, m.envelope, m.body, m.bodystructure, m.header_block, m.part_map,
	       m.subject, m.base_subject, m.from_addr, m.to_addr, m.cc_addr, m.bcc_addr,
	       m.sort_from, m.sort_to, m.sort_cc, m.sent_date, m.message_id, m.in_reply_to,
	       m.references_hdr
	FROM unnest(v_src_uids) WITH ORDINALITY AS s(uid, rn)
	JOIN messages m ON m.mailbox_id = p_src AND m.uid = s.uid;

	PERFORM mail_notify(v_acct, p_dst, 'new', (v_first || ':' || (v_first + v_n - 1)), v_modseq);
	IF p_move THEN
		PERFORM mail_expunge_uids(v_acct, p_src, v_src_uids);
	END IF;
	RETURN QUERY SELECT s.uid, v_first + s.rn - 1, v_uidv, v_modseq
		FROM unnest(v_src_uids) WITH ORDINALITY AS s(uid, rn) ORDER BY s.rn;
END $$;

CREATE FUNCTION mail_copy(p_src bigint, p_uids int8multirange, p_dst bigint)
RETURNS TABLE (src_uid bigint, dst_uid bigint, uidvalidity bigint, modseq bigint)
LANGUAGE sql AS $$
	SELECT * FROM mail_copy_move(p_src, p_uids, p_dst, false)
$$;

CREATE FUNCTION mail_move(p_src bigint, p_uids int8multirange, p_dst bigint)
RETURNS TABLE (src_uid bigint, dst_uid bigint, uidvalidity bigint, modseq bigint)
LANGUAGE sql AS $$
	SELECT * FROM mail_copy_move(p_src, p_uids, p_dst, true)
$$;

-- ------------------------------------------------------------------ mailbox tree

-- mail_mailbox_create - CREATE: the mailbox and any missing parents (RFC 9051 6.3.4).
-- ML003 if it exists. Returns the new mailbox's id and UIDVALIDITY.
CREATE FUNCTION mail_mailbox_create(p_account_id bigint, p_name text,
				    p_special_use text[] DEFAULT '{}', p_subscribed boolean DEFAULT false)
RETURNS TABLE (mailbox_id bigint, uidvalidity bigint)
LANGUAGE plpgsql AS $$
DECLARE
	v_name text := mail_mailbox_name(p_name);
	v_parts text[] := string_to_array(v_name, '/');
	v_id bigint;
	v_uidv bigint;
BEGIN
	PERFORM 1 FROM accounts WHERE id = p_account_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no such account: %', p_account_id USING ERRCODE = 'ML006';
	END IF;
	IF EXISTS (SELECT 1 FROM mailboxes WHERE account_id = p_account_id AND name = v_name) THEN
		RAISE EXCEPTION 'mailbox exists: %', v_name USING ERRCODE = 'ML003';
	END IF;
	FOR i IN 1 .. cardinality(v_parts) - 1 LOOP
		INSERT INTO mailboxes (account_id, name)
		VALUES (p_account_id, array_to_string(v_parts[1:i], '/'))
		ON CONFLICT ON CONSTRAINT mailboxes_account_id_name_key DO NOTHING;
	END LOOP;
	INSERT INTO mailboxes (account_id, name, special_use, subscribed)
	VALUES (p_account_id, v_name, coalesce(p_special_use, '{}'), coalesce(p_subscribed, false))
	RETURNING id, mailboxes.uidvalidity INTO v_id, v_uidv;
	PERFORM mail_notify(p_account_id, v_id, 'mailbox', '', 0);
	RETURN QUERY SELECT v_id, v_uidv;
END $$;

-- mail_mailbox_rename - RENAME with every child ('a' -> 'b' moves 'a/x' to 'b/x');
-- missing parents of the new name are created. Renaming INBOX moves its messages to
-- a new mailbox and leaves INBOX (and its children) in place (RFC 9051 6.3.6).
-- Ids and UIDVALIDITY stay. Returns one row per renamed mailbox.
CREATE FUNCTION mail_mailbox_rename(p_account_id bigint, p_old text, p_new text)
RETURNS TABLE (mailbox_id bigint, old_name text, new_name text)
LANGUAGE plpgsql AS $$
DECLARE
	v_old text := mail_mailbox_name(p_old);
	v_new text := mail_mailbox_name(p_new);
	v_parts text[] := string_to_array(v_new, '/');
	v_src bigint;
	v_dst bigint;
BEGIN
	PERFORM 1 FROM accounts WHERE id = p_account_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no such account: %', p_account_id USING ERRCODE = 'ML006';
	END IF;
	SELECT id INTO v_src FROM mailboxes WHERE account_id = p_account_id AND name = v_old;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no such mailbox: %', v_old USING ERRCODE = 'ML002';
	END IF;
	IF v_new = v_old OR left(v_new, length(v_old) + 1) = v_old || '/' THEN
		RAISE EXCEPTION 'cannot rename % into itself', v_old USING ERRCODE = 'ML004';
	END IF;
	-- the new name, and every new child name, must be free
	IF EXISTS (SELECT 1 FROM mailboxes mb
		   WHERE mb.account_id = p_account_id
		     AND mb.name IN (SELECT v_new || substr(c.name, length(v_old) + 1)
				     FROM mailboxes c
				     WHERE c.account_id = p_account_id
				       AND (c.name = v_old OR (v_old <> 'INBOX'
					    AND left(c.name, length(v_old) + 1) = v_old || '/')))) THEN
		RAISE EXCEPTION 'mailbox exists: %', v_new USING ERRCODE = 'ML003';
	END IF;
	FOR i IN 1 .. cardinality(v_parts) - 1 LOOP
		INSERT INTO mailboxes (account_id, name)
		VALUES (p_account_id, array_to_string(v_parts[1:i], '/'))
		ON CONFLICT ON CONSTRAINT mailboxes_account_id_name_key DO NOTHING;
	END LOOP;

	IF v_old = 'INBOX' THEN
		INSERT INTO mailboxes (account_id, name) VALUES (p_account_id, v_new)
		RETURNING id INTO v_dst;
		PERFORM mail_copy_move(v_src, '{[1,4294967296)}'::int8multirange, v_dst, true);
		PERFORM mail_notify(p_account_id, 0, 'mailbox', '', 0);
		RETURN QUERY SELECT v_dst, v_old, v_new;
		RETURN;
	END IF;

	RETURN QUERY
	UPDATE mailboxes mb SET name = v_new || substr(mb.name, length(v_old) + 1)
	WHERE mb.account_id = p_account_id
	  AND (mb.name = v_old OR left(mb.name, length(v_old) + 1) = v_old || '/')
	RETURNING mb.id, v_old || substr(mb.name, length(v_new) + 1), mb.name;
	PERFORM mail_notify(p_account_id, 0, 'mailbox', '', 0);
END $$;

-- mail_mailbox_delete - DELETE one mailbox (children stay, RFC 9051 6.3.5): its
-- messages go first so that quota usage and blob refcounts follow. INBOX: ML004.
CREATE FUNCTION mail_mailbox_delete(p_account_id bigint, p_name text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	v_name text := mail_mailbox_name(p_name);
	v_id bigint;
BEGIN
	IF v_name = 'INBOX' THEN
		RAISE EXCEPTION 'INBOX cannot be deleted' USING ERRCODE = 'ML004';
	END IF;
	PERFORM 1 FROM accounts WHERE id = p_account_id FOR UPDATE;
	SELECT id INTO v_id FROM mailboxes WHERE account_id = p_account_id AND name = v_name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no such mailbox: %', v_name USING ERRCODE = 'ML002';
	END IF;
	DELETE FROM messages WHERE mailbox_id = v_id;
	DELETE FROM mailboxes WHERE id = v_id;
	PERFORM mail_notify(p_account_id, v_id, 'mailbox', '', 0);
	RETURN v_id;
END $$;

-- mail_claim_recent - IMAP4rev1 \Recent: the caller (a read-write SELECT) owns the
-- uids in [first_recent_uid, uidnext); later sessions see none of them as recent
CREATE FUNCTION mail_claim_recent(p_mailbox_id bigint)
RETURNS TABLE (first_recent_uid bigint, uidnext bigint)
LANGUAGE sql AS $$
	UPDATE mailboxes mb SET first_recent_uid = mb.uidnext
	FROM (SELECT id, first_recent_uid AS old FROM mailboxes WHERE id = p_mailbox_id FOR UPDATE) AS o
	WHERE mb.id = o.id
	RETURNING o.old, mb.uidnext
$$;

-- ------------------------------------------------------------------ POP3 lock, auth

-- mail_maildrop_acquire - take or renew the account's maildrop lease for p_holder;
-- false when another live holder has it
CREATE FUNCTION mail_maildrop_acquire(p_account_id bigint, p_holder text, p_lease_ms integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO maildrop_locks (account_id, holder, expires_at)
	VALUES (p_account_id, p_holder, clock_timestamp() + p_lease_ms * interval '1 millisecond')
	ON CONFLICT (account_id) DO UPDATE
	SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
	WHERE maildrop_locks.holder = EXCLUDED.holder OR maildrop_locks.expires_at < clock_timestamp();
	RETURN FOUND;
END $$;

CREATE FUNCTION mail_maildrop_release(p_account_id bigint, p_holder text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
	DELETE FROM maildrop_locks WHERE account_id = p_account_id AND holder = p_holder;
	RETURN FOUND;
END $$;

-- mail_auth_failure - count one failure for key in a fixed window of p_window_s
-- seconds; returns the count in the current window
CREATE FUNCTION mail_auth_failure(p_key text, p_window_s integer) RETURNS integer
LANGUAGE sql AS $$
	INSERT INTO auth_failures AS f (key, window_start, count) VALUES (p_key, now(), 1)
	ON CONFLICT (key) DO UPDATE
	SET window_start = CASE WHEN f.window_start < now() - p_window_s * interval '1 second'
				THEN now() ELSE f.window_start END,
	    count = CASE WHEN f.window_start < now() - p_window_s * interval '1 second'
			 THEN 1 ELSE f.count + 1 END
	RETURNING count
$$;

-- mail_auth_failures - failures of key in the current window (0 if none)
CREATE FUNCTION mail_auth_failures(p_key text, p_window_s integer) RETURNS integer
LANGUAGE sql STABLE AS $$
	SELECT coalesce((SELECT count FROM auth_failures
			 WHERE key = p_key AND window_start >= now() - p_window_s * interval '1 second'), 0)
$$;

-- ------------------------------------------------------------------ queue, housekeeping

-- mail_queue_claim - lease up to p_limit due queue entries to p_holder for p_lease_s
-- seconds (entries whose lease ran out are due again: their runner died). Concurrent
-- runners in other routers skip rows already being claimed.
CREATE FUNCTION mail_queue_claim(p_holder text, p_limit integer, p_lease_s integer)
RETURNS SETOF outbound_queue
LANGUAGE sql AS $$
	UPDATE outbound_queue q
	SET status = 'sending', claimed_by = p_holder,
	    claimed_until = now() + p_lease_s * interval '1 second', updated_at = now()
	WHERE q.id IN (SELECT id FROM outbound_queue
		       WHERE (status = 'queued' AND next_attempt_at <= now())
			  OR (status = 'sending' AND claimed_until < now())
		       ORDER BY next_attempt_at
		       LIMIT p_limit
		       FOR UPDATE SKIP LOCKED)
	RETURNING q.*
$$;

-- mail_housekeep - prune what only needs to live for a while; returns rows removed
CREATE FUNCTION mail_housekeep(p_token_age interval DEFAULT '7 days') RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	v_n bigint;
	v_total bigint := 0;
BEGIN
	DELETE FROM delivery_tokens WHERE created_at < now() - p_token_age;
	GET DIAGNOSTICS v_n = ROW_COUNT;
	v_total := v_total + v_n;
	DELETE FROM maildrop_locks WHERE expires_at < now();
	GET DIAGNOSTICS v_n = ROW_COUNT;
	v_total := v_total + v_n;
	DELETE FROM auth_failures WHERE window_start < now() - interval '1 day';
	GET DIAGNOSTICS v_n = ROW_COUNT;
	RETURN v_total + v_n;
END $$;
