"""Real components started as local processes: etcd + kube-apiserver (:mod:`.kube`), Prometheus
(:mod:`.prometheus`), their binaries (:mod:`.binaries`), a process supervisor (:mod:`.process`)
and loopback ports (:mod:`.ports`). Used by ``tierguard demo`` and by the integration tests."""
