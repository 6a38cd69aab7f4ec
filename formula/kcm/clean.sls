# Undo the formula on this minion, concern by concern in the reverse order of init.sls,
# plus what kcm.beacon, kcm.master and kcm.pki_peer lay down. Nothing is removed when
# the paths in pillar are not plain absolute paths (kcm.config.paths). The download
# cache (paths:cache) is kept; the CA minion's files are kcm.ca.clean's job.
include:
  - .beacon.clean
  - .mine.clean
  - .service.clean
  - .kubeconfig.clean
  - .pki.clean
  - .install.clean
  - .config.clean
  - .master.clean
  - .pki_peer.clean
