{#- The deployed facts (the resolved config without PEM text) that kcm.* , the beacon and
    the orchestrations read back (kcm_config.deployed). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}

include:
  - .validated

kcm-config-deployed-facts:
  file.serialize:
    - name: {{ kcm.files.deployed | json }}
    - dataset: {{ salt['kcm_config.without_pems'](kcm) | json }}
    - serializer: json
    - mode: '0600'
    - makedirs: true
    - require:
      - kcm_config: kcm-config-validated
