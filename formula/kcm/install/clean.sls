{#- Removes the binaries, every installed version, the links and KCM's log directory, then
    the formula's directories that are left empty, and the accounts kcm.install.user
    created (never an account that was there before). The download cache is kept. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}
{%- set created = files.created_accounts %}

include:
  - {{ tplroot }}.pki.clean

kcm-install-clean-files:
  file.absent:
    - names:
{%- if files.link %}
      - {{ files.link | json }}
{%- endif %}
      - {{ files.binary | json }}
      - {{ files.versions | json }}
      - {{ (kcm.paths.logs ~ '/kube-controller-manager') | json }}
    - require:
      - sls: {{ tplroot }}.pki.clean

kcm-install-clean-directories:
  kcm_install.empty_directories_absent:
    - name: kcm-install
    - directories: {{ [kcm.paths.bin, kcm.paths.logs, kcm.paths.conf, kcm.paths.install] | json }}
    - require:
      - file: kcm-install-clean-files
{%- if salt['file.file_exists'](created ~ '/user') %}

kcm-install-clean-user:
  user.absent:
    - name: {{ salt['file.read'](created ~ '/user').strip() | json }}
    - require:
      - file: kcm-install-clean-files
    - require_in:
      - file: kcm-install-clean-created-accounts
{%- endif %}
{%- if salt['file.file_exists'](created ~ '/group') %}

kcm-install-clean-group:
  group.absent:
    - name: {{ salt['file.read'](created ~ '/group').strip() | json }}
    - require:
      - file: kcm-install-clean-files
{%-   if salt['file.file_exists'](created ~ '/user') %}
      - user: kcm-install-clean-user
{%-   endif %}
    - require_in:
      - file: kcm-install-clean-created-accounts
{%- endif %}

kcm-install-clean-created-accounts:
  file.absent:
    - name: {{ created | json }}
    - require:
      - file: kcm-install-clean-files
