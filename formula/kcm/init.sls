# kube-controller-manager from pillar `kcm:`: validate, install, PKI, kubeconfig, unit, service.
include:
  - .config
  - .install
  - .pki
  - .kubeconfig
  - .service
  - .mine
