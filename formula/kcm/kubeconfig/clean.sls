{#- Removes the kubeconfig, after the service that reads it. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}

include:
  - {{ tplroot }}.service.clean

kcm-kubeconfig-clean-file:
  file.absent:
    - name: {{ files.kubeconfig | json }}
    - require:
      - sls: {{ tplroot }}.service.clean

kcm-kubeconfig-clean-directory:
  kcm_install.empty_directories_absent:
    - name: kcm-kubeconfig
    - directories: {{ [kcm.paths.kubeconfig] | json }}
    - require:
      - file: kcm-kubeconfig-clean-file
