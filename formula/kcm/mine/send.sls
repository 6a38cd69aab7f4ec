{#- Publish the service-account public key to the mine, for kube-apiserver's
    --service-account-key-file (salt-run mine.get 'master*' kcm_service_account_public_key).
    Kept apart from kcm.pki so that nothing KCM needs waits on the mine. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}

include:
  - {{ tplroot }}.pki

kcm-mine-service-account-public-key:
  module.run:
    - mine.send:
      - kcm_service_account_public_key
      - mine_function: kcm_pki.service_account_public_key
      - path: {{ kcm.files.service_account_key | json }}
    - onchanges:
      - file: kcm-pki-service-account-key
