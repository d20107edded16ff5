-- 0002_admin.sql - what the admin API (router/rt_admin.c) needs beyond 0001:
--  * mail_account_create: an account and its standard mailboxes (INBOX through the
--    accounts_ai trigger, plus Sent, Drafts, Trash, Junk and Archive with their
--    RFC 6154 special-use attributes, all subscribed) in one transaction;
--  * mail_alias_create: an alias (or a domain's catch-all '@domain') with its checks;
--  * cluster_members and mail_cluster_heartbeat: the registry of the processes of the
--    cluster (routers now; front-ends and dnsd when they come) that GET
--    /api/v1/cluster reports - every member upserts a heartbeat every few seconds,
--    those seen in the last 30 s are alive.
--
-- ADDITIVE ONLY (README in this directory). The functions answer with a status
-- word rather than raising, so that the API maps each case to its HTTP status
-- without new SQLSTATEs: 'ok', 'no_domain', 'exists', 'alias_exists' /
-- 'account_exists' (an account and an alias may not share an address: the account
-- would silently win in mail_lookup_recipient).
--
-- An account and an alias with the same address are created under the same
-- transaction-level advisory lock (keyed by the address), so two concurrent
-- requests cannot both pass the "no alias/account there" check.

-- ------------------------------------------------------------------ cluster registry

CREATE TABLE cluster_members (
	kind text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_-]{0,31}$'),	-- 'router', 'frontend', 'dnsd'
	node_id text NOT NULL CHECK (node_id <> '' AND octet_length(node_id) <= 200),
	version text NOT NULL DEFAULT '',
	address text NOT NULL DEFAULT '',	-- its main listener (gRPC for a router)
	info jsonb NOT NULL DEFAULT '{}',	-- anything else worth showing (other listeners...)
	started_at timestamptz NOT NULL DEFAULT now(),
	seen_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (kind, node_id)
);

-- mail_cluster_heartbeat - a member says it is alive (the database's clock decides
-- seen_at, so members' clock skews do not matter); members silent for a day are
-- forgotten
CREATE FUNCTION mail_cluster_heartbeat(p_kind text, p_node_id text, p_version text,
				       p_address text, p_info jsonb, p_started_at timestamptz)
RETURNS void
LANGUAGE sql AS $$
	INSERT INTO cluster_members AS m (kind, node_id, version, address, info, started_at, seen_at)
	VALUES (p_kind, p_node_id, coalesce(p_version, ''), coalesce(p_address, ''),
		coalesce(p_info, '{}'), coalesce(p_started_at, now()), now())
	ON CONFLICT (kind, node_id) DO UPDATE
	SET version = EXCLUDED.version, address = EXCLUDED.address, info = EXCLUDED.info,
	    started_at = EXCLUDED.started_at, seen_at = now();
	DELETE FROM cluster_members WHERE seen_at < now() - interval '1 day';
$$;

-- ------------------------------------------------------------------ accounts, aliases

-- mail_address_lock - serialize creations of one address (account or alias)
CREATE FUNCTION mail_address_lock(p_address text) RETURNS void
LANGUAGE sql AS $$
	SELECT pg_advisory_xact_lock(hashtextextended('mail-address:' || p_address, 0))
$$;

-- mail_account_create - a new account with its standard mailboxes. result: 'ok'
-- (new_id set), 'no_domain' (the address's domain is not local), 'exists',
-- 'alias_exists'. The address is stored lower-cased; quotas 0 = unlimited.
CREATE FUNCTION mail_account_create(p_address text, p_password_hash text,
				    p_quota_bytes bigint DEFAULT 0, p_quota_messages bigint DEFAULT 0)
RETURNS TABLE (result text, new_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
	v_addr text := lower(p_address);
	v_domain bigint;
	v_id bigint;
BEGIN
	PERFORM mail_address_lock(v_addr);
	SELECT d.id INTO v_domain FROM domains d WHERE d.name = split_part(v_addr, '@', 2) FOR KEY SHARE;
	IF NOT FOUND THEN
		RETURN QUERY SELECT 'no_domain'::text, NULL::bigint;
		RETURN;
	END IF;
	IF EXISTS (SELECT 1 FROM aliases al WHERE al.address = v_addr) THEN
		RETURN QUERY SELECT 'alias_exists'::text, NULL::bigint;
		RETURN;
	END IF;
	INSERT INTO accounts (domain_id, address, password_hash, quota_bytes, quota_messages)
	VALUES (v_domain, v_addr, p_password_hash, coalesce(p_quota_bytes, 0), coalesce(p_quota_messages, 0))
	ON CONFLICT (address) DO NOTHING
	RETURNING id INTO v_id;
	IF v_id IS NULL THEN
		RETURN QUERY SELECT 'exists'::text, NULL::bigint;
		RETURN;
	END IF;
	-- INBOX came with the insert (accounts_ai); the RFC 6154 special-use set follows
	INSERT INTO mailboxes (account_id, name, special_use, subscribed)
	SELECT v_id, s.name, ARRAY[s.use], true
	FROM (VALUES ('Sent', '\Sent'), ('Drafts', '\Drafts'), ('Trash', '\Trash'),
		     ('Junk', '\Junk'), ('Archive', '\Archive')) AS s(name, use)
	ON CONFLICT ON CONSTRAINT mailboxes_account_id_name_key DO NOTHING;
	RETURN QUERY SELECT 'ok'::text, v_id;
END $$;

-- mail_alias_create - a new alias 'local@domain' or catch-all '@domain' with its
-- targets (distinct, order kept). result: 'ok' (new_id set), 'no_domain', 'exists',
-- 'account_exists'.
CREATE FUNCTION mail_alias_create(p_address text, p_targets text[])
RETURNS TABLE (result text, new_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
	v_addr text := lower(p_address);
	v_domain bigint;
	v_id bigint;
BEGIN
	PERFORM mail_address_lock(v_addr);
	SELECT d.id INTO v_domain FROM domains d WHERE d.name = split_part(v_addr, '@', 2) FOR KEY SHARE;
	IF NOT FOUND THEN
		RETURN QUERY SELECT 'no_domain'::text, NULL::bigint;
		RETURN;
	END IF;
	IF EXISTS (SELECT 1 FROM accounts a WHERE a.address = v_addr) THEN
		RETURN QUERY SELECT 'account_exists'::text, NULL::bigint;
		RETURN;
	END IF;
	INSERT INTO aliases (domain_id, address, targets)
	VALUES (v_domain, v_addr,
		ARRAY(SELECT t FROM (SELECT lower(t) AS t, min(o) AS o
				     FROM unnest(p_targets) WITH ORDINALITY AS x(t, o)
				     WHERE t IS NOT NULL AND t <> '' GROUP BY lower(t)) AS d ORDER BY o))
	ON CONFLICT (address) DO NOTHING
	RETURNING id INTO v_id;
	IF v_id IS NULL THEN
		RETURN QUERY SELECT 'exists'::text, NULL::bigint;
		RETURN;
	END IF;
	RETURN QUERY SELECT 'ok'::text, v_id;
END $$;
