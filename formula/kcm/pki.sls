{#- PKI files the unit uses. Pillar mode: PEM text from pillar `kcm:pki`, validated by
    kcm-config-validated; keys 0600, certificates 0644, owned by the KCM user; contents
    never shown in state output. #}
{%- from tpldir ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}

include:
  - .config
  - .install

kcm-pki-directory:
  file.directory:
    - name: {{ kcm.paths.pki }}
    - user: {{ kcm.user }}
    - group: {{ kcm.group }}
    - mode: '0755'
    - makedirs: true
    - require:
      - kcm_config: kcm-config-validated
      - file: kcm-install-directories

{%- if kcm.pki.mode == 'pillar' %}
{%-   for key, mode in [('ca_cert', '0644'), ('cert', '0644'), ('ca_key', '0600'), ('key', '0600'), ('service_account_key', '0600')] %}

kcm-pki-{{ key | replace('_', '-') }}:
  file.managed:
    - name: {{ files[key] }}
    - contents_pillar: kcm:pki:{{ key }}
    - user: {{ kcm.user }}
    - group: {{ kcm.group }}
    - mode: '{{ mode }}'
    - show_changes: false
    - require:
      - file: kcm-pki-directory
{%-   endfor %}
{%- endif %}
