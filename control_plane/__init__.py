"""The LMaaS control plane: model registry, artifacts, deployments, and the workers' sync.

One core object per concern, thin gRPC servicers over them (:mod:`.servicers`), one
interceptor for errors (:mod:`.interceptors`), wired by :class:`.app.ControlPlane`:

* :mod:`.artifacts` — content-addressed blobs (sha256), verified uploads with resume;
* :mod:`.registry` — models and immutable versions, numbered by compare-and-swap;
* :mod:`.deployments` — desired state per model, history, rollouts, rollback, NACK auto-restore;
* :mod:`.snapshots` — the complete desired state of a worker pool;
* :mod:`.sync` — one WorkerSync session per worker stream (leased presence, ACK/NACK);
* :mod:`.watcher` — one store watch per replica, fanned out to whoever waits for changes;
* :mod:`.store` — the metadata store (etcd or SQLite), the only source of truth;
* :mod:`.keys` — the store's key layout.

Replicas keep nothing a restart would lose; any replica serves any worker and any client.
"""
