-- 0004_deliver.sql - what the router's write path (router/rt_deliver.c) needs beyond
-- 0001: recipient resolution with full alias expansion in one round trip, and the
-- final delivery of an SMTP transaction - local copies and outbound queue rows - as
-- ONE statement, so that a message is either delivered to every local recipient and
-- queued for every remote one, or not at all.
--
-- ADDITIVE ONLY (README in this directory): new functions, nothing else.

-- mail_resolve - RCPT TO and Deliver: every address of p_rcpts expanded to its final
-- targets, one row per distinct target of each input address (rcpt = 1-based index
-- into p_rcpts). Aliases (exact, then the domain's catch-all, as
-- mail_lookup_recipient finds them) are followed through further aliases, breadth
-- first, up to 8 levels and 1000 distinct addresses per input; an address reached
-- twice from one input is listed once (alias cycles end there).
-- kind: 'account' (an enabled local account: account_id, and over_quota for a
-- message of p_size bytes, 0 = unknown size: at least one byte), 'disabled',
-- 'unknown' (a local domain with nobody at that address), 'remote' (not a local
-- domain: target is the address to relay to) or 'loop' (expansion too deep or too
-- wide). via_alias: the target was reached through an alias, not named directly.
CREATE FUNCTION mail_resolve(p_rcpts text[], p_size bigint)
RETURNS TABLE (rcpt integer, kind text, target text, account_id bigint,
	       over_quota boolean, via_alias boolean)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
	v_frontier text[];
	v_next text[];
	v_seen text[];
	v_addr text;
	v_t text;
	v_depth integer;
	v_full boolean;
	r record;
	q record;
BEGIN
	FOR i IN 1 .. coalesce(cardinality(p_rcpts), 0) LOOP
		v_frontier := ARRAY[lower(p_rcpts[i])];
		v_seen := v_frontier;
		v_depth := 0;
		WHILE cardinality(v_frontier) > 0 LOOP
			v_next := '{}';
			FOREACH v_addr IN ARRAY v_frontier LOOP
				SELECT l.kind, l.account_id, l.targets INTO r
				FROM mail_lookup_recipient(v_addr) AS l LIMIT 1;
				IF r.kind = 'alias' THEN
					v_full := false;
					IF v_depth < 8 THEN
						FOREACH v_t IN ARRAY coalesce(r.targets, '{}') LOOP
							v_t := lower(btrim(v_t));
							CONTINUE WHEN v_t = '' OR v_t = ANY (v_seen);
							IF cardinality(v_seen) >= 1000 THEN
								v_full := true;
								EXIT;
							END IF;
							v_seen := v_seen || v_t;
							v_next := v_next || v_t;
						END LOOP;
					END IF;
					IF v_depth >= 8 OR v_full THEN
						RETURN QUERY SELECT i, 'loop'::text, v_addr, NULL::bigint, false, v_depth > 0;
					END IF;
				ELSIF r.kind IN ('account', 'disabled') THEN
					SELECT a.quota_bytes, a.quota_messages, a.used_bytes, a.used_messages INTO q
					FROM accounts a WHERE a.id = r.account_id;
					RETURN QUERY SELECT i, r.kind, v_addr, r.account_id,
						(q.quota_bytes > 0 AND q.used_bytes + greatest(coalesce(p_size, 0), 1) > q.quota_bytes)
						OR (q.quota_messages > 0 AND q.used_messages + 1 > q.quota_messages),
						v_depth > 0;
				ELSE
					RETURN QUERY SELECT i, coalesce(r.kind, 'unknown'), v_addr, NULL::bigint, false,
						v_depth > 0;
				END IF;
			END LOOP;
			v_frontier := v_next;
			v_depth := v_depth + 1;
		END LOOP;
	END LOOP;
END $$;

-- mail_deliver_message - final delivery of one stored blob to the recipients of an
-- SMTP transaction, in this one transaction:
--  * every recipient resolved again (mail_resolve: the RCPT-time answer may be stale);
--  * one copy into the INBOX of each distinct local account (mail_deliver, with
--    p_token: a retry returns the first attempt's result instead of delivering twice;
--    quota checked there, under the account lock);
--  * one outbound_queue row per distinct remote target that may be relayed: a
--    recipient that is itself remote only when p_submitter is an enabled account
--    (authenticated submission), a remote target of a local alias always (forwarding).
--    The queue part is guarded by the token 'q:' || p_token, so a retry queues
--    nothing twice either.
-- One row per (recipient, target), in recipient order: status 'ok' (delivered:
-- account_id, mailbox_id, uid), 'queued' (queue_id), 'over_quota', 'disabled',
-- 'no_account', 'unknown', 'loop', 'relay_denied', or 'tempfail' (a retry whose first
-- attempt did not cover this target; mail_deliver's 'no_mailbox').
CREATE FUNCTION mail_deliver_message(p_rcpts text[], p_notify text[], p_orcpt text[],
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
							    envid, ret, notify, orcpt)
				SELECT DISTINCT ON (u.t) p_blob_id, CASE WHEN v_relay THEN p_submitter END,
				       coalesce(p_mail_from, ''), u.t, split_part(u.t, '@', 2), p_size,
				       nullif(p_envid, ''), nullif(p_ret, ''), nullif(p_notify[u.rc], ''),
				       nullif(p_orcpt[u.rc], '')
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
