-- 0010_ascii - the body text of an ASCII message lower-cased byte by byte.
--
-- ADDITIVE ONLY (README in this directory): one function replaced by a compatible
-- one (same arguments, same result columns).
--
-- Why. lower(left(body, 500000)) on a 10 KiB body cost about 80-100 us of the
-- database's CPU per delivery (measured: 2,000 bodies of 10,000 letters, 191-240 ms
-- against 37 ms to read them): under a UTF-8 LC_CTYPE such as C.UTF-8, lower()
-- converts every character to a wide character, maps it with towlower() and
-- converts it back, and left() walks the characters once more. Most mail bodies
-- are ASCII. The router marks an item whose text (p_texts[n]) is all ASCII with
-- "text_ascii": true; it also keeps every text under 256 KiB, so left() has
-- nothing to cut. Such a text is lower-cased in the "C" collation, a byte loop
-- (12 us for the same body) - the same result as lower() gives it, whenever the
-- database's lower() maps the ASCII letters as the "C" collation does (checked
-- once per call; not under a Turkish LC_CTYPE). Any other text, and the
-- items of a router of the previous release (no flag), are lower-cased as before.
-- The search (router/rt_search.c) is unchanged: it lower-cases only the key.
CREATE OR REPLACE FUNCTION mail_deliver_batch(p_items jsonb, p_texts text[])
RETURNS TABLE (item integer, rcpt integer, target text, status text, account_id bigint,
	       mailbox_id bigint, uid bigint, queue_id bigint)
LANGUAGE plpgsql
-- as in 0006: no JIT for these small statements, and the generic plans
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
	v_it jsonb;
	v_i integer;
	v_fast integer[];
	-- one element per item, at the same positions (v_items: its 1-based index)
	v_items integer[];
	v_tokens text[];
	v_sizes bigint[];
	v_rcpts jsonb[];
	-- one element per recipient of an item
	v_item integer[];
	v_rc integer[];
	v_addr text[];
	v_acct bigint[];
	v_mb bigint[];
	v_uid bigint[];
	v_modseq bigint[];
	-- the database's lower() maps the ASCII letters as the "C" locale's does (not so
	-- under a Turkish LC_CTYPE, where 'I' becomes a dotless i; no locale maps an ASCII
	-- character that is not a letter): an ASCII text may then be lower-cased byte by
	-- byte. A plain expression, so that it costs microseconds per call
	v_ascii_fold boolean := lower('ABCDEFGHIJKLMNOPQRSTUVWXYZ') = 'abcdefghijklmnopqrstuvwxyz';
BEGIN
	IF jsonb_typeof(p_items) IS DISTINCT FROM 'array' THEN
		RAISE EXCEPTION 'p_items must be a JSON array' USING ERRCODE = 'ML005';
	END IF;
	-- the items' small fields, in one pass over the items (the aggregates of one
	-- pass see the rows in the same order)
	SELECT array_agg(e.i::integer), array_agg(e.it->>'token'), array_agg((e.it->>'size')::bigint),
	       array_agg(e.it->'rcpts')
	INTO v_items, v_tokens, v_sizes, v_rcpts
	FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(it, i);
	SELECT array_agg(u.i), array_agg(x.rc::integer), array_agg(lower(x.a))
	INTO v_item, v_rc, v_addr
	FROM unnest(v_items, v_rcpts) AS u(i, rcpts),
	     jsonb_array_elements_text(u.rcpts) WITH ORDINALITY AS x(a, rc);
	PERFORM 1 FROM accounts a WHERE a.address = ANY (v_addr) ORDER BY a.id FOR UPDATE;

	-- the items that take the set-based way (accounts locked: their rows are
	-- stable), as in 0006
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
		-- the counters messages_after_insert would update in three more statements
		-- (mailbox, account, blob refcount) are updated here, in rows this
		-- statement writes anyway; the trigger sees mail.counted and leaves them
		PERFORM set_config('mail.counted', 'on', true);
		-- f: each item's fields taken out once (p_items->n copies the whole item,
		-- body text included, which 0006 did a dozen times per item)
		WITH f AS (
			SELECT e.i::integer AS item, e.it->>'token' AS token, (e.it->>'size')::bigint AS size,
			       e.it->>'blob_id' AS blob_id, e.it->'nodes' AS nodes, e.it->'meta' AS meta,
			       e.it->>'header_block' AS hdr
			FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(it, i)
			WHERE e.i = ANY (v_fast)
		), r AS (
			SELECT u.item, u.rc, u.addr, a.id AS acct, mb.id AS mb, f.size, f.blob_id
			FROM unnest(v_item, v_rc, v_addr) AS u(item, rc, addr)
			JOIN f ON f.item = u.item
			JOIN accounts a ON a.address = u.addr
			JOIN mailboxes mb ON mb.account_id = a.id AND mb.name = 'INBOX'
		), upd AS (
			-- a new message is unseen and not deleted
			UPDATE mailboxes mb SET uidnext = mb.uidnext + 1, highestmodseq = mb.highestmodseq + 1,
				message_count = mb.message_count + 1, unseen_count = mb.unseen_count + 1,
				total_bytes = mb.total_bytes + r.size
			FROM r WHERE mb.id = r.mb
			RETURNING r.item, r.rc, r.addr, r.acct, mb.id AS mb, mb.uidvalidity, mb.uidnext - 1 AS uid,
				  mb.highestmodseq AS modseq
		), acc AS (
			UPDATE accounts a SET used_bytes = a.used_bytes + r.size, used_messages = a.used_messages + 1
			FROM r WHERE a.id = r.acct
		), blob AS (
			-- taken in id order, as mail_blob_refs does; each message is a reference
			INSERT INTO blobs (id, size, nodes, refcount, unreferenced_since)
			SELECT b.id, b.size, b.nodes, c.refs, NULL
			FROM (SELECT f.blob_id AS id, max(f.size) AS size,
				     coalesce(array_agg(DISTINCT n.node ORDER BY n.node) FILTER (WHERE n.node IS NOT NULL),
					      '{}') AS nodes
			      FROM f LEFT JOIN LATERAL jsonb_array_elements_text(f.nodes) AS n(node) ON true
			      GROUP BY f.blob_id) AS b
			JOIN (SELECT r.blob_id, count(*) AS refs FROM r GROUP BY r.blob_id) AS c ON c.blob_id = b.id
			ORDER BY b.id
			ON CONFLICT (id) DO UPDATE
			SET nodes = ARRAY(SELECT DISTINCT n FROM unnest(blobs.nodes || EXCLUDED.nodes) AS n ORDER BY n),
			    refcount = blobs.refcount + EXCLUDED.refcount, unreferenced_since = NULL
		), txt AS (
			INSERT INTO message_text (blob_id, body)
			SELECT DISTINCT ON (t.blob_id) t.blob_id,
			       CASE WHEN t.ascii AND v_ascii_fold THEN lower(t.body COLLATE "C")
				    ELSE lower(left(t.body, 500000)) END
			FROM (SELECT e.it->>'blob_id' AS blob_id, coalesce(p_texts[e.i], e.it->>'body_text') AS body,
				     p_texts[e.i] IS NOT NULL AND e.it->>'text_ascii' = 'true' AS ascii
			      FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(it, i)
			      WHERE e.i = ANY (v_fast)) AS t
			WHERE t.body IS NOT NULL
			ORDER BY t.blob_id
			ON CONFLICT (blob_id) DO NOTHING
		), msg AS (
			INSERT INTO messages (mailbox_id, uid, modseq, flags, keywords, internal_date, size,
					      blob_id, envelope, body, bodystructure, header_block, part_map,
					      subject, base_subject, from_addr, to_addr, cc_addr, bcc_addr,
					      sort_from, sort_to, sort_cc, sent_date, message_id, in_reply_to,
					      references_hdr)
			SELECT u.mb, u.uid, u.modseq, 0, '{}', now(), f.size, f.blob_id,
			       decode(coalesce(f.meta->>'envelope', ''), 'base64'),
			       decode(coalesce(f.meta->>'body', ''), 'base64'),
			       decode(coalesce(f.meta->>'bodystructure', ''), 'base64'),
			       decode(coalesce(f.hdr, ''), 'base64'),
			       decode(f.meta->>'part_map', 'base64'),
			       f.meta->>'subject', f.meta->>'base_subject', f.meta->>'from', f.meta->>'to',
			       f.meta->>'cc', f.meta->>'bcc', f.meta->>'sort_from', f.meta->>'sort_to',
			       f.meta->>'sort_cc', (f.meta->>'sent_date')::timestamptz, f.meta->>'message_id',
			       f.meta->>'in_reply_to', f.meta->>'references'
			FROM upd u JOIN f ON f.item = u.item
		), tok AS (
			INSERT INTO delivery_tokens (token, result)
			SELECT f.token,
			       jsonb_agg(jsonb_build_object('account_id', u.acct, 'status', 'ok', 'mailbox_id', u.mb,
							    'uidvalidity', u.uidvalidity, 'uid', u.uid, 'modseq', u.modseq)
					 ORDER BY u.acct)
			FROM upd u JOIN f ON f.item = u.item GROUP BY f.item, f.token
			UNION ALL
			SELECT 'q:' || f.token, '{}'::jsonb FROM f
		)
		SELECT array_agg(u.item), array_agg(u.rc), array_agg(u.addr), array_agg(u.acct), array_agg(u.mb),
		       array_agg(u.uid), array_agg(u.modseq)
		INTO v_item, v_rc, v_addr, v_acct, v_mb, v_uid, v_modseq
		FROM upd u;
		PERFORM set_config('mail.counted', '', true);

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
			decode(coalesce(v_it->>'header_block', ''), 'base64'), coalesce(p_texts[v_i], v_it->>'body_text'),
			ARRAY(SELECT jsonb_array_elements_text(v_it->'nodes')), v_it->>'token') AS d;
	END LOOP;
END $$;
