{#- Undo kcm: stop and disable the service, remove the unit, kubeconfig, PKI files,
    installed versions and links. The download cache (paths:cache) is kept. #}
{%- from tpldir ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}

{%- if kcm.service.manage %}

kcm-clean-service-dead:
  service.dead:
    - name: {{ kcm.service.name }}
    - enable: false
    - require_in:
      - file: kcm-clean-files
{%- endif %}

kcm-clean-files:
  file.absent:
    - names:
      - {{ files.unit }}
      - {{ salt['file.dirname'](files.release_program) }}
      - {{ files.kubeconfig }}
      - {{ files.ca_cert }}
      - {{ files.ca_key }}
      - {{ files.cert }}
      - {{ files.key }}
      - {{ files.service_account_key }}
{%- if files.link %}
      - {{ files.link }}
{%- endif %}
      - {{ files.binary }}
      - {{ files.versions }}
      - {{ files.deployed }}
