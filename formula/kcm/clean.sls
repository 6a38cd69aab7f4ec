{#- Undo kcm: stop and disable the service, remove the unit, kubeconfig, PKI files,
    installed versions and links. The download cache (paths:cache) is kept. #}
{%- from tpldir ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}

{#- The paths to remove come from pillar: a bad one (a service name with ../) is refused
    before anything is removed. #}
kcm-clean-config-validated:
  kcm_config.validated:
    - name: kcm
    - config: {{ kcm | json }}
    - section: paths

{%- if kcm.service.manage %}

kcm-clean-service-dead:
  service.dead:
    - name: {{ kcm.service.name | json }}
    - enable: false
    - require:
      - kcm_config: kcm-clean-config-validated
    - require_in:
      - file: kcm-clean-files
{%- endif %}

kcm-clean-files:
  file.absent:
    - names:
      - {{ files.unit | json }}
      - {{ salt['file.dirname'](files.release_program) | json }}
      - {{ files.kubeconfig | json }}
      - {{ files.ca_cert | json }}
      - {{ files.ca_key | json }}
      - {{ files.cert | json }}
      - {{ files.key | json }}
      - {{ files.service_account_key | json }}
{%- if files.link %}
      - {{ files.link | json }}
{%- endif %}
      - {{ files.binary | json }}
      - {{ files.versions | json }}
      - {{ files.deployed | json }}
    - require:
      - kcm_config: kcm-clean-config-validated
