# kube-controller-manager from pillar `kcm:`: validate, install, PKI, kubeconfig, unit, service.
# One folder per concern, each with its clean.sls; kcm.clean undoes them in reverse.
include:
  - .config
  - .install
  - .pki
  - .kubeconfig
  - .service
  - .mine
