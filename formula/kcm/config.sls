{#- Validate the merged config before anything on disk changes; every other state of the
    formula requires this one. Also records what is deployed (no PEM text) for kcm.* . #}
{%- from tpldir ~ "/map.jinja" import kcm with context %}

kcm-config-validated:
  kcm_config.validated:
    - name: kcm
    - config: {{ kcm | json }}

kcm-config-deployed-facts:
  file.serialize:
    - name: {{ kcm.files.deployed | json }}
    - dataset: {{ salt['kcm_config.without_pems'](kcm) | json }}
    - serializer: json
    - mode: '0600'
    - makedirs: true
    - require:
      - kcm_config: kcm-config-validated
