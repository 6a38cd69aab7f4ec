{#- Binary: download (hash checked) -> versions/<version>/ (only the KCM member of the
    tarball, verified by running it) -> active symlink -> optional link; older versions
    beyond keep_versions are pruned. #}
{%- from tpldir ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}

include:
  - .config

{%- if kcm.create_user and kcm.user != 'root' %}

kcm-install-group:
  group.present:
    - name: {{ kcm.group }}
    - system: true
    - require:
      - kcm_config: kcm-config-validated

kcm-install-user:
  user.present:
    - name: {{ kcm.user }}
    - gid: {{ kcm.group }}
    - system: true
    - createhome: false
    - shell: /usr/sbin/nologin
    - require:
      - group: kcm-install-group
    - require_in:
      - file: kcm-install-directories
{%- endif %}

kcm-install-directories:
  file.directory:
    - names:
      - {{ kcm.paths.install }}
      - {{ files.versions }}
      - {{ kcm.paths.bin }}
      - {{ kcm.paths.logs }}/kube-controller-manager
      - {{ kcm.paths.conf }}
    - user: {{ kcm.user }}
    - group: {{ kcm.group }}
    - dir_mode: '0755'
    - makedirs: true
    - require:
      - kcm_config: kcm-config-validated

kcm-install-cache-directory:
  file.directory:
    - name: {{ kcm.paths.cache }}
    - mode: '0700'
    - makedirs: true
    - require:
      - kcm_config: kcm-config-validated

kcm-install-download:
  file.managed:
    - name: {{ files.download }}
    - source: {{ kcm.source.url }}
    - source_hash: {{ kcm.source.hash }}
    - mode: '0644'
    - show_changes: false
    - require:
      - file: kcm-install-cache-directory

kcm-install-binary:
  kcm_install.binary_installed:
    - name: {{ files.version_binary }}
    - source: {{ files.download }}
    - version: {{ kcm.version }}
    - member: {{ kcm.source.member if kcm.source.type == 'tarball' else '' }}
    - user: {{ kcm.user }}
    - group: {{ kcm.group }}
    - require:
      - file: kcm-install-download
      - file: kcm-install-directories

kcm-install-active-link:
  file.symlink:
    - name: {{ files.binary }}
    - target: {{ files.version_binary }}
    - atomic: true
    - force: true
    - require:
      - kcm_install: kcm-install-binary

{%- if files.link %}

kcm-install-path-link:
  file.symlink:
    - name: {{ files.link }}
    - target: {{ files.binary }}
    - makedirs: true
    - force: true
    - require:
      - file: kcm-install-active-link
{%- endif %}

kcm-install-prune-versions:
  kcm_install.versions_pruned:
    - name: {{ files.versions }}
    - keep: {{ kcm.keep_versions }}
    - active: {{ kcm.version }}
    - require:
      - file: kcm-install-active-link
