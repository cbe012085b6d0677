-- What a calling service may read beyond its own notifications: 'service' (the default)
-- sees only its own costs; 'finance' reads every client's (GetCostReport across clients).
ALTER TABLE kaskad_clients
    ADD COLUMN role text NOT NULL DEFAULT 'service' CHECK (role IN ('service', 'finance'));
