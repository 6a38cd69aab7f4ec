{#- A change of what KCM runs (the unit, the active binary, the kubeconfig, the PKI files)
    restarts it, and the decision is this one watch: list. With kcm:service:manage true
    systemd restarts it (service.running); with false, kcm_service.restarted restarts it
    through kcm:service:control_cmd, or reports the restart as still needed. The
    orchestrations (kcm_orch.apply) apply this SLS and read which of the two acted. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}

include:
  - .unit
  - {{ tplroot }}.kubeconfig

{%- if not salt['kcm_config.validate'](kcm) %}
{%-   set watched = [
        {"file": "kcm-service-unit"},
        {"file": "kcm-install-active-link"},
        {"kcm_kubeconfig": "kcm-kubeconfig-file"},
        {"sls": tplroot ~ ".pki.files"},
      ] %}
{%-   if kcm.service.manage %}

kcm-service-running:
  service.running:
    - name: {{ kcm.service.name | json }}
    - enable: true
    - watch: {{ watched | json }}
{%-   else %}

kcm-service-restarted:
  kcm_service.restarted:
    - name: {{ kcm.service.name | json }}
    - control_cmd: {{ kcm.service.control_cmd | json }}
    - watch: {{ watched | json }}
{%-   endif %}
{%- endif %}
