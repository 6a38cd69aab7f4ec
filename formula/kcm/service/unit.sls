{#- systemd unit with the flags rendered in Python (kcm_flags.exec_start) for the version
    in use, from salt://kcm/files/default/ or a site's own template (pillar kcm:tofs, see
    kcm_config.template_sources). Before the unit or the active binary changes (prereq),
    the new binary runs the ExecStart= of the unit about to land: when it rejects a flag,
    neither changes, so the running KCM is never restarted into flags its binary rejects. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}

include:
  - {{ tplroot }}.config
  - {{ tplroot }}.install

{#- Flags can only be rendered from a valid config; kcm-config-validated reports why not. #}
{%- if not salt['kcm_config.validate'](kcm) %}
{%-   set sources = salt['kcm_config.template_sources'](kcm, 'kcm-service-unit', 'kube-controller-manager.service.jinja', tplroot) %}
{%-   set context = {
        "binary": files.binary,
        "exec_start": salt['kcm_flags.exec_start'](kcm),
        "user": kcm.user,
        "group": kcm.group,
        "version": kcm.version,
        "log_dir": files.log_dir if kcm.log_to_file else '',
        "logs_directory": (files.log_dir | replace('/var/log/', '', 1)) if kcm.log_to_file else '',
        "credentials": kcm.credentials.load,
        "release": salt['kcm_release.exec_line'](kcm),
      } %}

kcm-service-unit-accepted:
  kcm_service.unit_accepted:
    - name: {{ files.version_binary | json }}
    - active_binary: {{ files.binary | json }}
    - source: {{ sources | json }}
    - context: {{ context | json }}
    - require:
      - kcm_install: kcm-install-binary
    - prereq:
      - file: kcm-service-unit
      - file: kcm-install-active-link

{#- Run by the unit's ExecStopPost= (and by kcm_orch for control_cmd): releases the Lease. #}
kcm-service-release-program:
  file.managed:
    - name: {{ files.release_program | json }}
    - source: salt://{{ tplroot }}/files/kcm-release-lease.py
    - user: root
    - group: root
    - mode: '0755'
    - follow_symlinks: false
    - makedirs: true
    - require:
      - kcm_config: kcm-config-validated
      - kcm_install: kcm-install-directories

kcm-service-unit:
  file.managed:
    - name: {{ files.unit | json }}
    - source: {{ sources | json }}
    - template: jinja
    - user: root
    - group: root
    - mode: '0600'
    - follow_symlinks: false
    - makedirs: true
    {#- Salt would give the directories it makes the file's mode plus x (0700): systemd's unit
        directory is 0755 like every directory the formula makes. #}
    - dir_mode: '0755'
    - context: {{ context | json }}
    - require:
      - kcm_config: kcm-config-validated
      - kcm_install: kcm-install-binary
      - file: kcm-service-release-program
{%- endif %}
