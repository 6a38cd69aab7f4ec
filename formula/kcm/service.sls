{#- systemd unit with the flags rendered in Python (kcm_flags.render) for the version in
    use. A preflight runs the new binary with the new flags first (prereq): when it
    rejects them, neither the unit nor the active binary changes, so the running KCM is
    never restarted into flags its binary rejects. #}
{%- from tpldir ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}

include:
  - .config
  - .install
  - .pki
  - .kubeconfig
{#- Flags can only be rendered from a valid config; kcm-config-validated reports why not. #}
{%- if not salt['kcm_config.validate'](kcm) %}

kcm-service-preflight:
  kcm.flags_accepted:
    - name: {{ files.version_binary | json }}
    - config: {{ salt['kcm_config.without_pems'](kcm) | json }}
    - require:
      - kcm_install: kcm-install-binary
    - prereq:
      - file: kcm-service-unit
      - file: kcm-install-active-link

{#- Run by the unit's ExecStopPost= (and kcm_orch for control_cmd): releases the Lease. #}
kcm-service-release-program:
  file.managed:
    - name: {{ files.release_program | json }}
    - source: salt://{{ tpldir }}/files/kcm-release-lease.py
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: true
    - require:
      - kcm_config: kcm-config-validated

kcm-service-unit:
  file.managed:
    - name: {{ files.unit | json }}
    - source: salt://{{ tpldir }}/files/kube-controller-manager.service.jinja
    - template: jinja
    - mode: '0644'
    - makedirs: true
    - context:
        binary: {{ files.binary | json }}
        exec_start: {{ salt['kcm_flags.exec_start'](kcm) | json }}
        user: {{ kcm.user | json }}
        group: {{ kcm.group | json }}
        version: {{ kcm.version | json }}
        log_dir: {{ ((kcm.paths.logs ~ '/kube-controller-manager') if kcm.log_to_file else '') | json }}
        release: {{ salt['kcm_release.exec_line'](kcm) | json }}
    - require:
      - kcm_config: kcm-config-validated
      - kcm_install: kcm-install-binary
      - file: kcm-service-release-program

{%- if kcm.service.manage %}

kcm-service-running:
  service.running:
    - name: {{ kcm.service.name | json }}
    - enable: true
    - watch:
      - file: kcm-service-unit
      - file: kcm-install-active-link
      - kcm_kubeconfig: kcm-kubeconfig-file
      - sls: {{ tpldir }}.pki
{%- endif %}
{%- endif %}
