{#- The KCM user and group (system accounts, no login), when kcm:create_user asks for them.
    An account this run creates is remembered (files.created_accounts/<kind>), so that
    kcm.install.clean removes the accounts the formula made and never one that was there. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}

include:
  - {{ tplroot }}.config

{%- if kcm.create_user and kcm.user != 'root' %}
{%-   for kind, name, database in [('group', kcm.group, 'group'), ('user', kcm.user, 'passwd')] %}

kcm-install-{{ kind }}-created-marker:
  file.managed:
    - name: {{ (kcm.files.created_accounts ~ '/' ~ kind) | json }}
    - contents: {{ name | json }}
    - mode: '0600'
    - makedirs: true
    {#- name is checked (letters, digits, _ . -) by kcm-config-validated before this runs #}
    - unless: getent {{ database }} {{ name }}
    - require:
      - kcm_config: kcm-config-validated
    - require_in:
      - {{ kind }}: kcm-install-{{ kind }}
{%-   endfor %}

kcm-install-group:
  group.present:
    - name: {{ kcm.group | json }}
    - system: true
    - require:
      - kcm_config: kcm-config-validated

kcm-install-user:
  user.present:
    - name: {{ kcm.user | json }}
    - gid: {{ kcm.group | json }}
    - system: true
    - createhome: false
    - shell: /usr/sbin/nologin
    - require:
      - group: kcm-install-group
{%- endif %}
