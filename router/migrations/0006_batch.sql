-- 0006_batch.sql - group commit of deliveries, and the body text kept as text.
--
-- ADDITIVE ONLY (README in this directory): a nullable column, a relaxed NOT NULL,
-- compatible replacements of two functions, one new function.
--
-- Why. Every transaction that calls pg_notify() takes PostgreSQL's one
-- notification-queue lock from its pre-commit until its commit record is flushed,
-- so deliveries - each with a 'new' notification - committed ONE AT A TIME, one WAL
-- fsync each, whatever the number of routers and connections (pg_stat_activity
-- showed them queued on Lock:object). mail_deliver_batch commits many SMTP
-- transactions' deliveries in one database transaction: one lock hold and one WAL
-- flush for all of them (router/rt_deliver.c batches what arrives while earlier
-- batches are committing). And the to_tsvector() of every body, 40% of a
-- delivery's database time, left the commit path: IMAP SEARCH BODY/TEXT asks for
-- substring matching, which a word index cannot answer anyway, so the decoded body
-- text is now stored as text (message_text.body, lower-cased at delivery so that a
-- search scans it without case-mapping every body again, compressed by TOAST) and
-- searched as such (router/rt_search.c). Rows delivered before this migration keep their
-- tsvector (tsv) and no body; the search falls back to the words for them.

ALTER TABLE message_text ADD COLUMN body text;
ALTER TABLE message_text ALTER COLUMN tsv DROP NOT NULL;
-- lz4 compresses the text several times faster than the default pglz, on the
-- commit path; a server built without lz4 keeps pglz
DO $$
BEGIN
	ALTER TABLE message_text ALTER COLUMN body SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
	RAISE NOTICE 'lz4 not available: message_text.body uses the default compression';
END $$;

-- mail_blob_prepare - as in 0001, committed without waiting for the WAL flush: it
-- only has to be visible (to the GC) before the upload starts, which an
-- asynchronous commit is; and it is durable whenever the delivery that follows is,
-- since that delivery's commit record comes later in the WAL and its flush covers
-- every earlier record. A crash in between loses only a row that protected a blob
-- nobody references yet.
CREATE OR REPLACE FUNCTION mail_blob_prepare(p_blob_id text, p_size bigint) RETURNS void
LANGUAGE sql AS $$
	SELECT set_config('synchronous_commit', 'off', true);
	INSERT INTO blobs (id, size) VALUES (p_blob_id, p_size)
	ON CONFLICT (id) DO UPDATE
	SET unreferenced_since = CASE WHEN blobs.refcount = 0 THEN now() END
$$;

-- mail_blob_prepare_many - mail_blob_prepare of several blobs in one statement
-- (the router batches the prepares of deliveries that arrive together), rows taken
-- in id order; a blob under a GC claim refuses the whole statement (40001) and
-- the router prepares the blobs one by one
CREATE FUNCTION mail_blob_prepare_many(p_ids text[], p_sizes bigint[]) RETURNS void
LANGUAGE sql AS $$
	SELECT set_config('synchronous_commit', 'off', true);
	INSERT INTO blobs (id, size)
	SELECT DISTINCT ON (u.id) u.id, u.size FROM unnest(p_ids, p_sizes) AS u(id, size) ORDER BY u.id
	ON CONFLICT (id) DO UPDATE
	SET unreferenced_since = CASE WHEN blobs.refcount = 0 THEN now() END
$$;

-- mail_deliver - as in 0001, but the body text is stored as text for the substring
-- search instead of being turned into a tsvector.
CREATE OR REPLACE FUNCTION mail_deliver(p_account_ids bigint[], p_mailbox text, p_blob_id text,
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
			-- the text, lower-cased once here: SEARCH BODY/TEXT is a substring
			-- match of lower(key) in it (no tsvector on the commit path any more)
			INSERT INTO message_text (blob_id, body)
			VALUES (p_blob_id, lower(left(p_body_text, 500000)))
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

-- The Return-Path. A Deliver's blob starts with "Return-Path: <reverse-path>"
-- (RFC 5321 4.4: the final delivery records it), which a relayed copy must not
-- carry: outbound_queue.data_offset is where the relayed data starts in the blob
-- (0 for older rows); size is then the relayed size. The router passes it in
-- p_meta ('data_offset'), so mail_deliver_message keeps its arguments.
ALTER TABLE outbound_queue ADD COLUMN data_offset bigint NOT NULL DEFAULT 0 CHECK (data_offset >= 0);

-- mail_deliver_message - as in 0004, with outbound_queue.data_offset from
-- p_meta->>'data_offset'.
CREATE OR REPLACE FUNCTION mail_deliver_message(p_rcpts text[], p_notify text[], p_orcpt text[],
				     p_mail_from text, p_submitter bigint, p_envid text, p_ret text,
				     p_blob_id text, p_size bigint, p_meta jsonb, p_header_block bytea,
				     p_body_text text, p_nodes text[], p_token text)
RETURNS TABLE (rcpt integer, target text, status text, account_id bigint, mailbox_id bigint,
	       uid bigint, queue_id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
	v_relay boolean := p_submitter IS NOT NULL AND EXISTS (
		SELECT 1 FROM accounts a WHERE a.id = p_submitter AND NOT a.disabled);
	v_r_rcpt integer[];
	v_r_kind text[];
	v_r_target text[];
	v_r_acct bigint[];
	v_r_via boolean[];
	v_accts bigint[];
	v_d_acct bigint[];
	v_d_status text[];
	v_d_mb bigint[];
	v_d_uid bigint[];
	v_queue jsonb := '{}';
	v_fresh boolean := true;
	v_offset bigint := least(greatest(coalesce((p_meta->>'data_offset')::bigint, 0), 0), p_size);
BEGIN
	SELECT array_agg(r.rcpt), array_agg(r.kind), array_agg(r.target), array_agg(r.account_id),
	       array_agg(r.via_alias)
	INTO v_r_rcpt, v_r_kind, v_r_target, v_r_acct, v_r_via
	FROM mail_resolve(p_rcpts, p_size) AS r;

	SELECT array_agg(DISTINCT u.a) INTO v_accts
	FROM unnest(v_r_kind, v_r_acct) AS u(k, a) WHERE u.k = 'account';

	-- local copies (always called: it records the token even with no account)
	SELECT array_agg(d.account_id), array_agg(d.status), array_agg(d.mailbox_id), array_agg(d.uid)
	INTO v_d_acct, v_d_status, v_d_mb, v_d_uid
	FROM mail_deliver(coalesce(v_accts, '{}'), 'INBOX', p_blob_id, p_size, NULL, 0, NULL,
			  p_meta, p_header_block, p_body_text, p_nodes, p_token) AS d;

	-- remote copies
	IF p_token IS NOT NULL THEN
		INSERT INTO delivery_tokens (token) VALUES ('q:' || p_token) ON CONFLICT (token) DO NOTHING;
		v_fresh := FOUND;
	END IF;
	IF v_fresh THEN
		IF EXISTS (SELECT 1 FROM unnest(v_r_kind, v_r_via) AS u(k, via)
			   WHERE u.k = 'remote' AND (u.via OR v_relay)) THEN
			-- lock order: accounts, mailboxes (mail_deliver above), then the blob
			INSERT INTO blobs (id, size, nodes) VALUES (p_blob_id, p_size, coalesce(p_nodes, '{}'))
			ON CONFLICT (id) DO UPDATE
			SET nodes = ARRAY(SELECT DISTINCT n FROM unnest(blobs.nodes || EXCLUDED.nodes) AS n ORDER BY n);
			WITH ins AS (
				INSERT INTO outbound_queue (blob_id, account_id, mail_from, rcpt, domain, size,
							    envid, ret, notify, orcpt, data_offset)
				SELECT DISTINCT ON (u.t) p_blob_id, CASE WHEN v_relay THEN p_submitter END,
				       coalesce(p_mail_from, ''), u.t, split_part(u.t, '@', 2), p_size - v_offset,
				       nullif(p_envid, ''), nullif(p_ret, ''), nullif(p_notify[u.rc], ''),
				       nullif(p_orcpt[u.rc], ''), v_offset
				FROM unnest(v_r_rcpt, v_r_kind, v_r_target, v_r_via) AS u(rc, k, t, via)
				WHERE u.k = 'remote' AND (u.via OR v_relay)
				ORDER BY u.t, u.rc
				RETURNING outbound_queue.id AS qid, outbound_queue.rcpt AS qrcpt
			)
			SELECT coalesce(jsonb_object_agg(ins.qrcpt, ins.qid), '{}') INTO v_queue FROM ins;
		END IF;
		IF p_token IS NOT NULL THEN
			UPDATE delivery_tokens SET result = v_queue WHERE token = 'q:' || p_token;
		END IF;
	ELSE
		SELECT coalesce(t.result, '{}') INTO v_queue FROM delivery_tokens t WHERE t.token = 'q:' || p_token;
	END IF;

	RETURN QUERY
	SELECT u.rc, u.t,
	       CASE u.k
		WHEN 'account' THEN CASE WHEN d.st IS NULL OR d.st = 'no_mailbox' THEN 'tempfail' ELSE d.st END
		WHEN 'remote' THEN CASE WHEN NOT (u.via OR v_relay) THEN 'relay_denied'
				       WHEN v_queue ? u.t THEN 'queued' ELSE 'tempfail' END
		ELSE u.k END,
	       u.a, d.mb, d.uid, (v_queue ->> u.t)::bigint
	FROM unnest(v_r_rcpt, v_r_kind, v_r_target, v_r_acct, v_r_via) WITH ORDINALITY
		AS u(rc, k, t, a, via, o)
	LEFT JOIN unnest(v_d_acct, v_d_status, v_d_mb, v_d_uid) AS d(a, st, mb, uid) ON d.a = u.a
	ORDER BY u.o;
END $$;

-- mail_deliver_batch - the final deliveries of several SMTP transactions in ONE
-- transaction, with the results mail_deliver_message gives each.
-- p_items: a JSON array of objects {rcpts, notify, orcpt (arrays of strings),
-- mail_from, submitter (account id or null), envid, ret, blob_id, size, meta (the
-- p_meta object), header_block (base64), body_text, nodes (array), token}.
-- Rows: item (1-based) followed by mail_deliver_message's columns; the rows of one
-- item are together, items in no particular order.
--
-- The common item goes the set-based way: a first attempt (fresh token) whose
-- recipients are all distinct enabled accounts named directly (no alias, no
-- remote address), each with an INBOX and room under its quota, and none of them
-- a recipient of another item of the batch. For all such items at once: one
-- UPDATE of the INBOXes (uidnext, highestmodseq), one INSERT of the blob rows,
-- the texts, the messages (so the counter triggers run once per batch) and the
-- tokens - what mail_deliver does per account, without its per-statement cost.
-- Every other item (aliases, remote targets, retries, quota refusals, ...) goes
-- through mail_deliver_message, one by one.
--
-- Deadlocks: every account a recipient address names directly is locked first,
-- in id order, as every other function does - so two batches (or a batch and an
-- expunge) never wait on each other's account rows in a cycle; blob rows are
-- taken in id order. Accounts reached only through an alias are locked when
-- their item runs; should that close a cycle, the deadlock detector fails the
-- batch and the router commits its items one by one. An item that fails (an
-- exception) fails the batch the same way, and so does a token that a
-- concurrent transaction inserted after the check (unique violation).
CREATE FUNCTION mail_deliver_batch(p_items jsonb)
RETURNS TABLE (item integer, rcpt integer, target text, status text, account_id bigint,
	       mailbox_id bigint, uid bigint, queue_id bigint)
LANGUAGE plpgsql
-- The JSON functions' row estimates would make the planner JIT-compile these small
-- statements (half a second each); and with array arguments of known length a
-- custom plan always looks cheaper, so every call would plan the big statement
-- again: the generic plans (a few rows per array, index lookups) are the right ones.
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
	v_it jsonb;
	v_i integer;
	v_fast integer[];
	v_items integer[];
	v_tokens text[];
	v_sizes bigint[];
	v_item integer[];
	v_rc integer[];
	v_addr text[];
	v_acct bigint[];
	v_mb bigint[];
	v_uid bigint[];
	v_modseq bigint[];
BEGIN
	IF jsonb_typeof(p_items) IS DISTINCT FROM 'array' THEN
		RAISE EXCEPTION 'p_items must be a JSON array' USING ERRCODE = 'ML005';
	END IF;
	PERFORM 1 FROM accounts a
	WHERE a.address IN (SELECT lower(r.a) FROM jsonb_array_elements(p_items) AS e(it),
			    jsonb_array_elements_text(e.it->'rcpts') AS r(a))
	ORDER BY a.id FOR UPDATE;

	-- the items that take the set-based way (accounts locked: their rows are
	-- stable). The recipients are first taken out of the JSON into arrays, so
	-- that the planner sees a few rows, not jsonb's default hundreds, and looks
	-- them up by index.
	SELECT array_agg(e.i::integer ORDER BY e.i), array_agg(e.it->>'token' ORDER BY e.i),
	       array_agg((e.it->>'size')::bigint ORDER BY e.i)
	INTO v_items, v_tokens, v_sizes
	FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(it, i);
	SELECT array_agg(e.i::integer), array_agg(x.rc::integer), array_agg(lower(x.a))
	INTO v_item, v_rc, v_addr
	FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(it, i),
	     jsonb_array_elements_text(e.it->'rcpts') WITH ORDINALITY AS x(a, rc);
	WITH ra AS (
		SELECT u.item, a.id AS acct, a.disabled, a.quota_bytes, a.quota_messages, a.used_bytes,
		       a.used_messages, mb.id AS mb
		FROM unnest(v_item, v_addr) AS u(item, addr)
		LEFT JOIN accounts a ON a.address = u.addr
		LEFT JOIN mailboxes mb ON mb.account_id = a.id AND mb.name = 'INBOX'
	), bad AS (
		-- an item with a recipient that is not a plain, enabled account with an
		-- INBOX and room, or an account another recipient of the batch also is
		SELECT DISTINCT ra.item
		FROM ra JOIN unnest(v_items, v_sizes) AS it(item, size) ON it.item = ra.item
		WHERE ra.acct IS NULL OR ra.disabled OR ra.mb IS NULL
		   OR (ra.quota_bytes > 0 AND ra.used_bytes + it.size > ra.quota_bytes)
		   OR (ra.quota_messages > 0 AND ra.used_messages + 1 > ra.quota_messages)
		UNION
		SELECT ra.item FROM ra
		WHERE ra.acct IN (SELECT r2.acct FROM ra r2 GROUP BY r2.acct HAVING count(*) > 1)
	)
	SELECT array_agg(it.item) INTO v_fast
	FROM unnest(v_items, v_tokens) AS it(item, token)
	WHERE it.token IS NOT NULL
	  AND it.item = ANY (v_item)
	  AND it.item NOT IN (SELECT bad.item FROM bad)
	  AND NOT EXISTS (SELECT 1 FROM delivery_tokens t WHERE t.token = it.token)
	  AND NOT EXISTS (SELECT 1 FROM delivery_tokens t WHERE t.token = 'q:' || it.token);

	IF v_fast IS NOT NULL THEN
		WITH r AS (
			SELECT u.item, u.rc, u.addr, a.id AS acct, mb.id AS mb
			FROM unnest(v_item, v_rc, v_addr) AS u(item, rc, addr)
			JOIN accounts a ON a.address = u.addr
			JOIN mailboxes mb ON mb.account_id = a.id AND mb.name = 'INBOX'
			WHERE u.item = ANY (v_fast)
		), upd AS (
			UPDATE mailboxes mb SET uidnext = mb.uidnext + 1, highestmodseq = mb.highestmodseq + 1
			FROM r WHERE mb.id = r.mb
			RETURNING r.item, r.rc, r.addr, r.acct, mb.id AS mb, mb.uidvalidity, mb.uidnext - 1 AS uid,
				  mb.highestmodseq AS modseq
		), blob AS (
			INSERT INTO blobs (id, size, nodes)
			SELECT b.id, max(b.size),
			       coalesce(array_agg(DISTINCT b.node ORDER BY b.node) FILTER (WHERE b.node IS NOT NULL), '{}')
			FROM (SELECT p_items->(f.item - 1)->>'blob_id' AS id, (p_items->(f.item - 1)->>'size')::bigint AS size,
				     n.node
			      FROM unnest(v_fast) AS f(item)
			      LEFT JOIN LATERAL jsonb_array_elements_text(p_items->(f.item - 1)->'nodes') AS n(node)
				ON true) AS b
			GROUP BY b.id ORDER BY b.id
			ON CONFLICT (id) DO UPDATE
			SET nodes = ARRAY(SELECT DISTINCT n FROM unnest(blobs.nodes || EXCLUDED.nodes) AS n ORDER BY n)
		), txt AS (
			INSERT INTO message_text (blob_id, body)
			SELECT DISTINCT ON (t.id) t.id, lower(left(t.body, 500000))
			FROM (SELECT p_items->(f.item - 1)->>'blob_id' AS id, p_items->(f.item - 1)->>'body_text' AS body
			      FROM unnest(v_fast) AS f(item)) AS t
			WHERE t.body IS NOT NULL
			ORDER BY t.id
			ON CONFLICT (blob_id) DO NOTHING
		), msg AS (
			INSERT INTO messages (mailbox_id, uid, modseq, flags, keywords, internal_date, size,
					      blob_id, envelope, body, bodystructure, header_block, part_map,
					      subject, base_subject, from_addr, to_addr, cc_addr, bcc_addr,
					      sort_from, sort_to, sort_cc, sent_date, message_id, in_reply_to,
					      references_hdr)
			SELECT u.mb, u.uid, u.modseq, 0, '{}', now(), (j.it->>'size')::bigint, j.it->>'blob_id',
			       decode(coalesce(j.m->>'envelope', ''), 'base64'),
			       decode(coalesce(j.m->>'body', ''), 'base64'),
			       decode(coalesce(j.m->>'bodystructure', ''), 'base64'),
			       decode(coalesce(j.it->>'header_block', ''), 'base64'),
			       decode(j.m->>'part_map', 'base64'),
			       j.m->>'subject', j.m->>'base_subject', j.m->>'from', j.m->>'to',
			       j.m->>'cc', j.m->>'bcc', j.m->>'sort_from', j.m->>'sort_to',
			       j.m->>'sort_cc', (j.m->>'sent_date')::timestamptz, j.m->>'message_id',
			       j.m->>'in_reply_to', j.m->>'references'
			FROM upd u
			CROSS JOIN LATERAL (SELECT p_items->(u.item - 1) AS it, p_items->(u.item - 1)->'meta' AS m) AS j
		), tok AS (
			INSERT INTO delivery_tokens (token, result)
			SELECT p_items->(u.item - 1)->>'token',
			       jsonb_agg(jsonb_build_object('account_id', u.acct, 'status', 'ok', 'mailbox_id', u.mb,
							    'uidvalidity', u.uidvalidity, 'uid', u.uid, 'modseq', u.modseq)
					 ORDER BY u.acct)
			FROM upd u GROUP BY u.item
			UNION ALL
			SELECT 'q:' || (p_items->(f.item - 1)->>'token'), '{}'::jsonb FROM unnest(v_fast) AS f(item)
		)
		SELECT array_agg(u.item), array_agg(u.rc), array_agg(u.addr), array_agg(u.acct), array_agg(u.mb),
		       array_agg(u.uid), array_agg(u.modseq)
		INTO v_item, v_rc, v_addr, v_acct, v_mb, v_uid, v_modseq
		FROM upd u;

		PERFORM mail_notify(n.acct, n.mb, 'new', n.uid::text, n.modseq)
		FROM unnest(v_acct, v_mb, v_uid, v_modseq) AS n(acct, mb, uid, modseq);
		RETURN QUERY
		SELECT n.item, n.rc, n.addr, 'ok'::text, n.acct, n.mb, n.uid, NULL::bigint
		FROM unnest(v_item, v_rc, v_addr, v_acct, v_mb, v_uid) AS n(item, rc, addr, acct, mb, uid)
		ORDER BY n.item, n.rc;
	END IF;

	-- the rest, one by one
	v_i := 0;
	FOR v_it IN SELECT e.it FROM jsonb_array_elements(p_items) AS e(it) LOOP
		v_i := v_i + 1;
		CONTINUE WHEN v_i = ANY (coalesce(v_fast, '{}'));
		RETURN QUERY
		SELECT v_i, d.rcpt, d.target, d.status, d.account_id, d.mailbox_id, d.uid, d.queue_id
		FROM mail_deliver_message(
			ARRAY(SELECT jsonb_array_elements_text(v_it->'rcpts')),
			ARRAY(SELECT jsonb_array_elements_text(v_it->'notify')),
			ARRAY(SELECT jsonb_array_elements_text(v_it->'orcpt')),
			v_it->>'mail_from', (v_it->>'submitter')::bigint, v_it->>'envid', v_it->>'ret',
			v_it->>'blob_id', (v_it->>'size')::bigint, v_it->'meta',
			decode(coalesce(v_it->>'header_block', ''), 'base64'), v_it->>'body_text',
			ARRAY(SELECT jsonb_array_elements_text(v_it->'nodes')), v_it->>'token') AS d;
	END LOOP;
END $$;
