{#- Stops and disables the service (kcm:service:manage), removes the unit and the release
    program. The first of the cleans: nothing below may go while KCM still runs on it. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}

include:
  - {{ tplroot }}.config.paths

{%- if kcm.service.manage %}

kcm-service-clean-dead:
  service.dead:
    - name: {{ kcm.service.name | json }}
    - enable: false
    - require:
      - kcm_config: kcm-config-paths-validated
    - require_in:
      - file: kcm-service-clean-files
{%- endif %}

kcm-service-clean-files:
  file.absent:
    - names:
      - {{ files.unit | json }}
      - {{ salt['file.dirname'](files.release_program) | json }}
    - require:
      - kcm_config: kcm-config-paths-validated
