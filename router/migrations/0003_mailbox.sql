-- 0003_mailbox.sql - mailbox selection in one round trip, and RENAME INBOX into one
-- of its own children (router/rt_mailbox.c). Additive: one new function and a
-- compatible replacement (same arguments, same result columns).

-- mail_select - SELECT / EXAMINE of mailbox p_name of account p_account_id in one
-- statement. With p_claim_recent (a read-write SELECT) the caller first claims the
-- IMAP4rev1 \Recent uids through mail_claim_recent; the mailbox row stays locked
-- until the statement commits, so the state returned below (taken after the claim)
-- is exactly the mailbox at the claim. Without it nothing is locked or written and
-- the one RETURN QUERY reads one snapshot, so the header and the messages agree.
-- Rows, in no guaranteed order:
--   'h'  the header: mailbox_id, uidvalidity, uidnext, modseq (= highestmodseq),
--        first_recent_uid (uids >= it are \Recent for this session; for EXAMINE the
--        ones no read-write SELECT has claimed yet) and vanished (QRESYNC: uids
--        expunged after p_changed_since, as an IMAP uid set; NULL when p_changed_since
--        is 0 or NULL);
--   'k'  one per keyword used in the mailbox: uid = its index (0-based, in name
--        order), keyword = the name;
--   'm'  one per message: uid, modseq, flags, keywords (indexes of the 'k' rows,
--        NULL when none).
-- ML002 when the account has no such mailbox.
CREATE FUNCTION mail_select(p_account_id bigint, p_name text, p_claim_recent boolean,
			    p_changed_since bigint)
RETURNS TABLE (kind text, uid bigint, modseq bigint, flags integer, keywords integer[],
	       mailbox_id bigint, uidvalidity bigint, uidnext bigint, first_recent_uid bigint,
	       vanished text, keyword text)
LANGUAGE plpgsql AS $$
DECLARE
	v_name text := mail_mailbox_name(p_name);
	v_id bigint;
	v_recent bigint;
BEGIN
	IF coalesce(p_claim_recent, false) THEN
		SELECT mb.id INTO v_id FROM mailboxes mb
		WHERE mb.account_id = p_account_id AND mb.name = v_name;
		IF FOUND THEN
			SELECT c.first_recent_uid INTO v_recent FROM mail_claim_recent(v_id) AS c;
		END IF;
		IF v_recent IS NULL THEN
			RAISE EXCEPTION 'no such mailbox: %', v_name USING ERRCODE = 'ML002';
		END IF;
	END IF;

	RETURN QUERY
	WITH mb AS (
		SELECT m.id, m.uidvalidity, m.uidnext, m.highestmodseq, m.first_recent_uid
		FROM mailboxes m
		WHERE m.account_id = p_account_id AND m.name = v_name
	), kw AS (
		SELECT d.k, (row_number() OVER (ORDER BY d.k) - 1)::integer AS idx
		FROM (SELECT DISTINCT unnest(m.keywords) AS k
		      FROM messages m JOIN mb ON m.mailbox_id = mb.id) AS d
	)
	SELECT 'h'::text, NULL::bigint, mb.highestmodseq, NULL::integer, NULL::integer[],
	       mb.id, mb.uidvalidity, mb.uidnext, coalesce(v_recent, mb.first_recent_uid),
	       CASE WHEN coalesce(p_changed_since, 0) > 0
		    THEN mail_vanished(mb.id, p_changed_since) END,
	       NULL::text
	FROM mb
	UNION ALL
	SELECT 'k'::text, kw.idx::bigint, NULL::bigint, NULL::integer, NULL::integer[],
	       NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::text, kw.k
	FROM kw
	UNION ALL
	SELECT 'm'::text, m.uid, m.modseq, m.flags,
	       CASE WHEN cardinality(m.keywords) > 0
		    THEN ARRAY(SELECT kw.idx FROM kw WHERE kw.k = ANY (m.keywords) ORDER BY kw.idx) END,
	       NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::text, NULL::text
	FROM messages m JOIN mb ON m.mailbox_id = mb.id;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no such mailbox: %', v_name USING ERRCODE = 'ML002';
	END IF;
END $$;

-- mail_mailbox_rename - as in 0001, except that INBOX may be renamed to one of its
-- own children ("RENAME INBOX INBOX/old" is the classic way to archive it: the
-- messages move, INBOX stays and is empty, RFC 3501 6.3.5). Any other mailbox still
-- cannot be renamed into itself (ML004).
CREATE OR REPLACE FUNCTION mail_mailbox_rename(p_account_id bigint, p_old text, p_new text)
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
	IF v_new = v_old OR (v_old <> 'INBOX' AND left(v_new, length(v_old) + 1) = v_old || '/') THEN
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
