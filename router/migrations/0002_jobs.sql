-- 0002_jobs.sql - what the routers' background jobs need (router/rt_jobs.c).
--
-- Additive only (see README): a new table, one nullable column on blobs, a trigger
-- and new functions. Nothing of 0001 changes meaning for the code that uses it.
--
--  * job_leases: one row per background job ('blob_repair', 'blob_gc', 'housekeep').
--    The router that holds a job's unexpired lease runs it; the holder renews it every
--    few seconds, anybody takes it over once it has expired. A lease is a row rather
--    than a session advisory lock because the router's pool reconnects connections
--    and pipelines requests from many callers over them: a session lock would die
--    (or, worse, survive) with whichever connection happened to run the statement.
--    Every job statement below re-checks the lease in the statement itself, so a
--    router whose lease ran out while it was not looking changes nothing.
--  * Two-phase blob GC. 0001's mail_blob_gc deletes the row first and the bodies
--    after: a delivery of the same content in between (mail_blob_prepare inserts a
--    fresh row, the body is uploaded again) would then lose its body to the late
--    node deletes. Here the GC first CLAIMS rows (gc_claimed_at), deletes the bodies
--    on the nodes, and only then deletes the row, in a statement that checks the row
--    is still unreferenced and still carries that same claim. While a claim is fresh
--    the trigger blobs_gc_guard refuses any new reference or mail_blob_prepare on the
--    row with SQLSTATE 40001 (serialization_failure: rolled back, safe to retry, see
--    db_result_retryable), so nothing can come to depend on a body being deleted. A
--    claim older than GC_CLAIM_STALE (5 minutes; the GC sends no delete later than 1
--    minute after its claim) is dead: the row is usable again and may be re-claimed.
--  * mail_blob_add_node: placement bookkeeping (late put acknowledgements, read
--    repairs, repair-job copies) as an idempotent array append.

-- ------------------------------------------------------------------ leases

CREATE TABLE job_leases (
	job text PRIMARY KEY,
	holder text NOT NULL,
	acquired_at timestamptz NOT NULL DEFAULT clock_timestamp(),	-- this holder's tenure began
	renewed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	expires_at timestamptz NOT NULL
);

-- mail_job_leases - take or renew each job of p_jobs for p_holder, for p_lease_ms from
-- now. One row per job: who holds it now, whether that is p_holder, and whether
-- p_holder has just begun a tenure (it did not hold an unexpired lease before).
CREATE FUNCTION mail_job_leases(p_holder text, p_jobs text[], p_lease_ms integer)
RETURNS TABLE (lease_job text, lease_holder text, held boolean, acquired boolean)
LANGUAGE plpgsql AS $$
DECLARE
	v_job text;
	v_now timestamptz;
	v_holder text;
	v_exp timestamptz;
	v_mine boolean;
BEGIN
	IF p_holder IS NULL OR p_holder = '' OR coalesce(p_lease_ms, 0) <= 0 THEN
		RAISE EXCEPTION 'invalid lease request' USING ERRCODE = 'ML005';
	END IF;
	FOREACH v_job IN ARRAY p_jobs LOOP
		v_now := clock_timestamp();
		INSERT INTO job_leases (job, holder, acquired_at, renewed_at, expires_at)
		VALUES (v_job, p_holder, v_now, v_now, v_now + p_lease_ms * interval '1 millisecond')
		ON CONFLICT (job) DO NOTHING;
		IF FOUND THEN
			lease_job := v_job; lease_holder := p_holder; held := true; acquired := true;
			RETURN NEXT;
			CONTINUE;
		END IF;
		SELECT l.holder, l.expires_at INTO v_holder, v_exp
		FROM job_leases l WHERE l.job = v_job FOR UPDATE;
		v_now := clock_timestamp();
		v_mine := v_holder = p_holder AND v_exp >= v_now;
		IF v_mine OR v_exp < v_now THEN
			UPDATE job_leases l
			SET holder = p_holder, renewed_at = v_now,
			    expires_at = v_now + p_lease_ms * interval '1 millisecond',
			    acquired_at = CASE WHEN v_mine THEN l.acquired_at ELSE v_now END
			WHERE l.job = v_job;
			lease_job := v_job; lease_holder := p_holder; held := true; acquired := NOT v_mine;
		ELSE
			lease_job := v_job; lease_holder := v_holder; held := false; acquired := false;
		END IF;
		RETURN NEXT;
	END LOOP;
END $$;

-- mail_job_lease_valid - does p_holder hold an unexpired lease on p_job right now?
CREATE FUNCTION mail_job_lease_valid(p_job text, p_holder text) RETURNS boolean
LANGUAGE sql AS $$
	SELECT EXISTS (SELECT 1 FROM job_leases l
		       WHERE l.job = p_job AND l.holder = p_holder AND l.expires_at > clock_timestamp())
$$;

-- ------------------------------------------------------------------ placement

-- mail_blob_add_node - record that p_node holds a copy (idempotent; false when the
-- row is missing or already names the node)
CREATE FUNCTION mail_blob_add_node(p_blob_id text, p_node text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE blobs b
	SET nodes = ARRAY(SELECT DISTINCT n FROM unnest(b.nodes || p_node) AS n ORDER BY n)
	WHERE b.id = p_blob_id AND NOT (p_node = ANY (b.nodes));
	RETURN FOUND;
END $$;

-- mail_job_repair_scan - one page of the blob repair job's placement scan: of the
-- p_limit blobs after p_after (id order), those in use (refcount > 0) whose recorded
-- nodes include fewer than p_r of p_live (the nodes configured and alive), then one
-- row with last = true naming the page's last id (none when the page was empty: the
-- pass is over). Nothing when p_holder does not hold the 'blob_repair' lease.
CREATE FUNCTION mail_job_repair_scan(p_holder text, p_after text, p_limit integer,
				     p_live text[], p_r integer)
RETURNS TABLE (blob_id text, size bigint, nodes text[], last boolean)
LANGUAGE plpgsql AS $$
BEGIN
	IF NOT mail_job_lease_valid('blob_repair', p_holder) THEN
		RETURN;
	END IF;
	RETURN QUERY
	WITH page AS (SELECT b.id, b.size, b.nodes, b.refcount FROM blobs b
		      WHERE b.id > coalesce(p_after, '') ORDER BY b.id LIMIT p_limit)
	SELECT p.id, p.size, p.nodes, false FROM page p
	WHERE p.refcount > 0
	  AND (SELECT count(DISTINCT n) FROM unnest(p.nodes) AS n WHERE n = ANY (p_live)) < p_r
	UNION ALL
	SELECT max(p.id), NULL::bigint, NULL::text[], true FROM page p HAVING count(*) > 0;
END $$;

-- mail_job_verify_page - the blobs in use that the database says p_node holds, with ids
-- in (p_after, p_upto] (p_upto NULL: to the end), ascending, at most p_limit: what
-- the repair job compares with a page of the node's own List
CREATE FUNCTION mail_job_verify_page(p_holder text, p_node text, p_after text, p_upto text,
				     p_limit integer)
RETURNS TABLE (blob_id text, nodes text[])
LANGUAGE plpgsql AS $$
BEGIN
	IF NOT mail_job_lease_valid('blob_repair', p_holder) THEN
		RETURN;
	END IF;
	RETURN QUERY
	SELECT b.id, b.nodes FROM blobs b
	WHERE b.id > coalesce(p_after, '') AND (p_upto IS NULL OR b.id <= p_upto)
	  AND p_node = ANY (b.nodes) AND b.refcount > 0
	ORDER BY b.id LIMIT p_limit;
END $$;

-- ------------------------------------------------------------------ blob GC

ALTER TABLE blobs ADD COLUMN gc_claimed_at timestamptz;	-- a GC is deleting the bodies
ALTER TABLE blobs ADD COLUMN gc_retry_at timestamptz;	-- a GC left copies behind: not before

-- blobs_gc_guard - no new reference (refcount up) and no mail_blob_prepare
-- (unreferenced_since refreshed) while a fresh GC claim stands: 40001, retry. A stale
-- claim (its GC died) is dropped instead and the change goes through.
CREATE FUNCTION blobs_gc_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	IF OLD.gc_claimed_at IS NOT NULL
	   AND NEW.gc_claimed_at IS NOT DISTINCT FROM OLD.gc_claimed_at
	   AND (NEW.refcount > OLD.refcount
		OR NEW.unreferenced_since IS DISTINCT FROM OLD.unreferenced_since) THEN
		IF OLD.gc_claimed_at > clock_timestamp() - interval '5 minutes' THEN
			RAISE EXCEPTION 'blob % is being deleted by the garbage collector: retry', OLD.id
				USING ERRCODE = '40001';
		END IF;
		NEW.gc_claimed_at := NULL;
	END IF;
	RETURN NEW;
END $$;

CREATE TRIGGER blobs_gc_guard BEFORE UPDATE ON blobs
	FOR EACH ROW EXECUTE FUNCTION blobs_gc_guard();

-- mail_job_blob_gc_claim - claim up to p_limit blobs unreferenced for longer than
-- p_grace_ms (oldest first; rows another GC holds are skipped). Returns each claimed
-- blob's recorded nodes and the claim (pass it back to mail_job_blob_gc_finish).
-- Nothing when p_holder does not hold the 'blob_gc' lease.
CREATE FUNCTION mail_job_blob_gc_claim(p_holder text, p_grace_ms bigint, p_limit integer)
RETURNS TABLE (blob_id text, nodes text[], claim text)
LANGUAGE plpgsql AS $$
DECLARE
	v_now timestamptz := clock_timestamp();
BEGIN
	IF NOT mail_job_lease_valid('blob_gc', p_holder) THEN
		RETURN;
	END IF;
	RETURN QUERY
	UPDATE blobs b SET gc_claimed_at = v_now
	WHERE b.id IN (SELECT x.id FROM blobs x
		       WHERE x.refcount = 0
			 AND x.unreferenced_since < v_now - p_grace_ms * interval '1 millisecond'
			 AND (x.gc_claimed_at IS NULL OR x.gc_claimed_at < v_now - interval '5 minutes')
			 AND (x.gc_retry_at IS NULL OR x.gc_retry_at < v_now)
		       ORDER BY x.unreferenced_since
		       LIMIT p_limit
		       FOR UPDATE SKIP LOCKED)
	  AND b.refcount = 0
	RETURNING b.id, b.nodes, to_char(v_now AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
END $$;

-- mail_job_blob_gc_finish - after the node deletes of a claimed blob: with no copy
-- left behind (p_kept empty) the row goes, if it is still unreferenced and still under
-- this claim ('deleted'); else the claim is released and nodes become the nodes that
-- may still hold a copy, retried after p_retry_ms ('kept'). 'lost': the claim was no
-- longer ours (it went stale and the blob was used again) - nothing changed.
CREATE FUNCTION mail_job_blob_gc_finish(p_blob_id text, p_claim text, p_kept text[],
					p_retry_ms integer)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	v_claim timestamptz := p_claim::timestamptz;
BEGIN
	IF coalesce(cardinality(p_kept), 0) = 0 THEN
		DELETE FROM blobs b
		WHERE b.id = p_blob_id AND b.refcount = 0 AND b.gc_claimed_at = v_claim;
		IF FOUND THEN
			RETURN 'deleted';
		END IF;
	ELSE
		UPDATE blobs b
		SET gc_claimed_at = NULL, nodes = p_kept,
		    gc_retry_at = clock_timestamp() + p_retry_ms * interval '1 millisecond'
		WHERE b.id = p_blob_id AND b.gc_claimed_at = v_claim;
		IF FOUND THEN
			RETURN 'kept';
		END IF;
	END IF;
	RETURN 'lost';
END $$;

-- ------------------------------------------------------------------ housekeeping

-- mail_job_housekeep - mail_housekeep under the 'housekeep' lease; -1 when not held
CREATE FUNCTION mail_job_housekeep(p_holder text) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
	IF NOT mail_job_lease_valid('housekeep', p_holder) THEN
		RETURN -1;
	END IF;
	RETURN mail_housekeep();
END $$;
