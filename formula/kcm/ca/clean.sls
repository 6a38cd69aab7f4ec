{#- On the CA minion only (not part of kcm.clean): removes the CA directory kcm.ca laid
    down. The CA stays in pillar; the x509_signing_policies entry is pillar's to remove. #}
{%- set ca_dir = salt['pillar.get']('kcm_ca:dir', '/etc/pki/kcm-ca') %}

kcm-ca-clean-directory:
  file.absent:
    - name: {{ ca_dir | json }}
