{#- Removes the deployed facts, once everything they describe is gone. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}

include:
  - {{ tplroot }}.install.clean

kcm-config-clean-deployed-facts:
  file.absent:
    - name: {{ files.deployed | json }}
    - require:
      - sls: {{ tplroot }}.install.clean
