-- 0007_prune.sql - the expunged table stops growing forever, and a mailbox of any
-- size can be selected (router/rt_jobs.c, router/rt_mailbox.c).
--
-- ADDITIVE ONLY (README in this directory): two columns with constant-time
-- defaults (no table rewrite, no index build on the big tables), new functions, and
-- mail_vanished replaced by a compatible function (same arguments and result).
--
--  * expunged.expunged_at: when the row was written. Rows that exist when this runs
--    get the migration's time, so they are kept for the whole retention from now.
--  * mailboxes.expunged_pruned_modseq: the highest modseq of any expunged row the
--    housekeeping job has deleted from this mailbox (0: none). QRESYNC (RFC 7162
--    3.2.5.2, 3.2.10): a client whose known modseq is below it may have missed
--    expunges the table no longer lists, so mail_vanished then reports every uid
--    below UIDNEXT that is not in the mailbox - a superset the RFC allows (uids that
--    never existed, or were already reported). A client at or above it gets the
--    exact answer: every row with a higher modseq is still there.
--    mail_vanished keeps its arguments and result; its answer differs only once
--    something was pruned, which routers of the previous release never do - and for
--    them too the superset is the correct answer then.
--  * mail_job_prune_expunged: the pruning step of the 'housekeep' job, bounded work
--    per call, over the mailboxes that have expunged rows (a loose scan of the
--    primary key: no new index on expunged is needed).
--  * mail_select_page: Select in pages of UID runs (proto/router.proto SelectRequest
--    runs/after_uid/uid_below/recent_from/limit).

ALTER TABLE expunged ADD COLUMN expunged_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE mailboxes ADD COLUMN expunged_pruned_modseq bigint NOT NULL DEFAULT 0;

-- ------------------------------------------------------------------ QRESYNC

-- mail_vanished_in - QRESYNC: the uids in (p_after, p_upto] expunged after modseq
-- p_since, as an IMAP uid set ('' for none). When rows the answer needs may have been
-- pruned (p_since below the mailbox's expunged_pruned_modseq): every uid of the
-- range that is not in the mailbox. Reads the caller's snapshot (STABLE), so inside
-- one query it agrees with the messages that query lists.
CREATE FUNCTION mail_vanished_in(p_mailbox_id bigint, p_since bigint, p_after bigint, p_upto bigint)
RETURNS text
LANGUAGE sql STABLE AS $$
	SELECT CASE
		WHEN coalesce(p_since, 0) < mb.expunged_pruned_modseq THEN
			(SELECT coalesce(string_agg(CASE WHEN g.lo = g.hi THEN g.lo::text ELSE g.lo || ':' || g.hi END,
						    ',' ORDER BY g.lo), '')
			 FROM (SELECT coalesce(lag(u.uid) OVER (ORDER BY u.uid), p_after) + 1 AS lo, u.uid - 1 AS hi
			       FROM (SELECT m.uid FROM messages m
				     WHERE m.mailbox_id = p_mailbox_id AND m.uid > p_after AND m.uid <= p_upto
				     UNION ALL
				     SELECT p_upto + 1) AS u) AS g
			 WHERE g.hi >= g.lo)
		ELSE
			mail_uidset(ARRAY(SELECT e.uid FROM expunged e
					  WHERE e.mailbox_id = p_mailbox_id AND e.modseq > coalesce(p_since, 0)
					    AND e.uid > p_after AND e.uid <= p_upto))
		END
	FROM mailboxes mb WHERE mb.id = p_mailbox_id
$$;

-- mail_vanished - as in 0001 (uids expunged after modseq p_since), correct after
-- pruning: the superset described above when p_since is older than what was pruned
CREATE OR REPLACE FUNCTION mail_vanished(p_mailbox_id bigint, p_since bigint) RETURNS text
LANGUAGE sql STABLE AS $$
	SELECT mail_vanished_in(mb.id, p_since, 0, least(mb.uidnext - 1, 4294967295))
	FROM mailboxes mb WHERE mb.id = p_mailbox_id
$$;

-- ------------------------------------------------------------------ pruning

-- mail_job_prune_expunged - one step of the expunged-row pruning under the
-- 'housekeep' lease: deletes rows older than p_max_age_ms (at most p_limit rows in
-- all, oldest modseqs first) from the mailboxes with expunged rows and an id above
-- p_after, in id order, visiting at most p_mailboxes of them; raises each pruned
-- mailbox's expunged_pruned_modseq to the highest modseq deleted, in the same
-- transaction (when the step's rows run out in the middle of a mailbox, the cursor
-- returned is just before it, so the next step finishes it). A mailbox whose row is locked (a change in progress) is skipped this
-- pass: nothing here ever waits for a lock, so it cannot deadlock with the mail
-- functions (which lock accounts, then mailboxes). One row: the last mailbox id
-- visited (NULL when the scan reached the end: the pass is over) and the rows
-- deleted. No row when p_holder does not hold the lease.
CREATE FUNCTION mail_job_prune_expunged(p_holder text, p_after bigint, p_max_age_ms bigint,
					p_mailboxes integer, p_limit integer)
RETURNS TABLE (last_mailbox bigint, pruned bigint)
LANGUAGE plpgsql AS $$
DECLARE
	v_cutoff timestamptz := now() - greatest(coalesce(p_max_age_ms, 0), 0) * interval '1 millisecond';
	v_cur bigint := coalesce(p_after, 0);
	v_next bigint;
	v_left integer := greatest(coalesce(p_limit, 0), 1);
	v_visits integer := 0;
	v_n bigint;
	v_max bigint;
	v_total bigint := 0;
BEGIN
	IF NOT mail_job_lease_valid('housekeep', p_holder) THEN
		RETURN;
	END IF;
	LOOP
		IF v_left <= 0 THEN
			-- the step's rows are used up, maybe in the middle of this mailbox: the
			-- next step visits it again (rows were deleted: progress is made)
			last_mailbox := v_cur - 1; pruned := v_total;
			RETURN NEXT;
			RETURN;
		END IF;
		IF v_visits >= greatest(coalesce(p_mailboxes, 0), 1) THEN
			last_mailbox := v_cur; pruned := v_total;
			RETURN NEXT;
			RETURN;
		END IF;
		-- the next mailbox that has expunged rows: one probe of the primary key
		SELECT min(e.mailbox_id) INTO v_next FROM expunged e WHERE e.mailbox_id > v_cur;
		IF v_next IS NULL THEN
			last_mailbox := NULL; pruned := v_total;
			RETURN NEXT;
			RETURN;
		END IF;
		v_cur := v_next;
		v_visits := v_visits + 1;
		-- its oldest row (modseq order is commit order, so also roughly time order)
		CONTINUE WHEN NOT EXISTS (
			SELECT 1 FROM (SELECT e.expunged_at FROM expunged e WHERE e.mailbox_id = v_cur
				       ORDER BY e.modseq LIMIT 1) AS o
			WHERE o.expunged_at < v_cutoff);
		PERFORM 1 FROM mailboxes mb WHERE mb.id = v_cur FOR UPDATE SKIP LOCKED;
		CONTINUE WHEN NOT FOUND;
		WITH victims AS (
			SELECT e.uid FROM expunged e
			WHERE e.mailbox_id = v_cur
			ORDER BY e.modseq LIMIT v_left
		), del AS (
			DELETE FROM expunged e USING victims v
			WHERE e.mailbox_id = v_cur AND e.uid = v.uid AND e.expunged_at < v_cutoff
			RETURNING e.modseq
		)
		SELECT count(*), max(del.modseq) INTO v_n, v_max FROM del;
		IF v_n > 0 THEN
			UPDATE mailboxes mb SET expunged_pruned_modseq = greatest(mb.expunged_pruned_modseq, v_max)
			WHERE mb.id = v_cur;
			v_total := v_total + v_n;
			v_left := v_left - v_n::integer;
		END IF;
	END LOOP;
END $$;

-- ------------------------------------------------------------------ select in pages

-- mail_select_page - SELECT / EXAMINE of a mailbox of any size, one page per call,
-- messages as runs: consecutive uids (no uid missing in between) with the same
-- flags and keywords, split where \Recent starts. The page holds the messages with
-- uid in (p_after_uid, below), at most p_limit of them, where below is UIDNEXT on the
-- first page (p_after_uid 0) and least(p_uid_below, UIDNEXT) on the next ones (0: no
-- bound); its span is (p_after_uid, last message of the page] when more follow, else
-- (p_after_uid, below - 1].
-- Only the first page with p_claim_recent claims \Recent (as mail_select does: the
-- mailbox row then stays locked until commit, so the page is the mailbox at the
-- claim); a later page takes p_recent_from (0: nothing is recent). Everything else is
-- one RETURN QUERY: one snapshot, so header, runs and vanished agree.
-- Rows, in no guaranteed order:
--   'h'  the header: mailbox_id, uidvalidity, uidnext, modseq (= highestmodseq),
--        first_recent_uid (uids >= it are \Recent; 0 none), vanished (QRESYNC: the
--        uids of the span expunged after p_changed_since, mail_vanished_in; NULL
--        when p_changed_since is 0 or NULL), more (messages follow the page),
--        uid = the last message of the page (NULL when empty), last_uid = the end of
--        the span;
--   'k'  one per keyword used in the page: uid = its index (0-based, in name
--        order), keyword = the name;
--   'r'  one per run: uid = first, last_uid = last, modseq = the run's highest,
--        flags, keywords (indexes of the 'k' rows, NULL when none).
-- ML002 when the account has no such mailbox.
CREATE FUNCTION mail_select_page(p_account_id bigint, p_name text, p_claim_recent boolean,
				 p_changed_since bigint, p_after_uid bigint, p_uid_below bigint,
				 p_recent_from bigint, p_limit integer)
RETURNS TABLE (kind text, uid bigint, last_uid bigint, modseq bigint, flags integer, keywords integer[],
	       mailbox_id bigint, uidvalidity bigint, uidnext bigint, first_recent_uid bigint,
	       vanished text, keyword text, more boolean)
LANGUAGE plpgsql AS $$
DECLARE
	v_name text := mail_mailbox_name(p_name);
	v_after bigint := greatest(coalesce(p_after_uid, 0), 0);
	v_limit integer := least(greatest(coalesce(p_limit, 0), 1), 1000000);
	v_id bigint;
	v_recent bigint;
BEGIN
	IF v_after = 0 AND coalesce(p_claim_recent, false) THEN
		SELECT mb.id INTO v_id FROM mailboxes mb
		WHERE mb.account_id = p_account_id AND mb.name = v_name;
		IF FOUND THEN
			SELECT c.first_recent_uid INTO v_recent FROM mail_claim_recent(v_id) AS c;
		END IF;
		IF v_recent IS NULL THEN
			RAISE EXCEPTION 'no such mailbox: %', v_name USING ERRCODE = 'ML002';
		END IF;
	ELSIF v_after > 0 THEN
		v_recent := greatest(coalesce(p_recent_from, 0), 0);
	END IF;

	RETURN QUERY
	WITH mb AS (
		SELECT m.id, m.uidvalidity, m.uidnext, m.highestmodseq,
		       coalesce(v_recent, m.first_recent_uid) AS recent,
		       CASE WHEN v_after > 0 AND coalesce(p_uid_below, 0) > 0
			    THEN least(p_uid_below, m.uidnext) ELSE m.uidnext END AS below
		FROM mailboxes m
		WHERE m.account_id = p_account_id AND m.name = v_name
	), cut AS (
		SELECT m.uid, m.modseq, m.flags, m.keywords
		FROM messages m JOIN mb ON m.mailbox_id = mb.id
		WHERE m.uid > v_after AND m.uid < mb.below
		ORDER BY m.uid
		LIMIT v_limit + 1
	), page AS (
		SELECT c.* FROM cut c ORDER BY c.uid LIMIT v_limit
	), st AS (
		SELECT (SELECT count(*) FROM cut) > v_limit AS more, (SELECT max(p.uid) FROM page p) AS last
	), span AS (
		SELECT mb.id, CASE WHEN st.more THEN st.last ELSE least(mb.below - 1, 4294967295) END AS upto
		FROM mb, st
	), brk AS (
		SELECT p.uid, p.modseq, p.flags, p.keywords,
		       CASE WHEN p.uid = lag(p.uid) OVER w + 1 AND p.flags = lag(p.flags) OVER w
			     AND p.keywords = lag(p.keywords) OVER w
			     AND (mb.recent = 0 OR p.uid <> mb.recent) THEN 0 ELSE 1 END AS starts
		FROM page p, mb
		WINDOW w AS (ORDER BY p.uid)
	), grp AS (
		SELECT x.uid, x.modseq, x.flags, x.keywords, sum(x.starts) OVER (ORDER BY x.uid) AS run
		FROM brk x
	), runs AS (
		SELECT min(y.uid) AS first, max(y.uid) AS last, max(y.modseq) AS modseq, y.flags, y.keywords
		FROM grp y GROUP BY y.run, y.flags, y.keywords
	), kw AS (
		SELECT d.k, (row_number() OVER (ORDER BY d.k) - 1)::integer AS idx
		FROM (SELECT DISTINCT unnest(r.keywords) AS k FROM runs r) AS d
	)
	SELECT 'h'::text, st.last, span.upto, mb.highestmodseq, NULL::integer, NULL::integer[],
	       mb.id, mb.uidvalidity, mb.uidnext, mb.recent,
	       CASE WHEN coalesce(p_changed_since, 0) > 0
		    THEN mail_vanished_in(mb.id, p_changed_since, v_after, span.upto) END,
	       NULL::text, st.more
	FROM mb, st, span
	UNION ALL
	SELECT 'k'::text, kw.idx::bigint, NULL::bigint, NULL::bigint, NULL::integer, NULL::integer[],
	       NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::text, kw.k, NULL::boolean
	FROM kw
	UNION ALL
	SELECT 'r'::text, r.first, r.last, r.modseq, r.flags,
	       CASE WHEN cardinality(r.keywords) > 0
		    THEN ARRAY(SELECT kw.idx FROM kw WHERE kw.k = ANY (r.keywords) ORDER BY kw.idx) END,
	       NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::text, NULL::text, NULL::boolean
	FROM runs r;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no such mailbox: %', v_name USING ERRCODE = 'ML002';
	END IF;
END $$;
