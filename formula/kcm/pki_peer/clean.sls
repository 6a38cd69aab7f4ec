{#- Removes the peer rule of kcm.pki_peer (read by the salt-master at its next start). #}
{%- set conf_dir = salt['config.get']('config_dir', '/etc/salt') %}

include:
  - {{ tpldir.split('/')[0] }}.config.paths

kcm-pki-peer-clean-config:
  file.absent:
    - name: {{ (conf_dir ~ '/master.d/kcm-pki-peer.conf') | json }}
    - require:
      - kcm_config: kcm-config-paths-validated
