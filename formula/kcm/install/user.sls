{#- The KCM user and group (system accounts, no login), when kcm:create_user asks for them.
    An account this run creates is remembered (files.created_accounts/<kind>), so that
    kcm.install.clean removes the accounts the formula made and never one that was there. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}

include:
  - {{ tplroot }}.config

{%- if kcm.create_user and kcm.user != 'root' %}
{%-   for kind, name in [('group', kcm.group), ('user', kcm.user)] %}

kcm-install-{{ kind }}-created-marker:
  file.managed:
    - name: {{ (kcm.files.created_accounts ~ '/' ~ kind) | json }}
    - contents: {{ name | json }}
    - mode: '0600'
    - makedirs: true
    {#- No shell: the account is looked up by Salt's own user.info / group.info, with the
        name passed as data, so no pillar text ever reaches a command line. #}
    - unless:
      - fun: {{ (kind ~ '.info') | json }}
        name: {{ name | json }}
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
