{#- Binary: download (hash checked) -> versions/<version>/ (only the KCM member of the
    tarball, verified by running it as the KCM user) -> active symlink -> optional link;
    older versions beyond keep_versions are pruned. All of it root's, writable by root alone. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}

include:
  - {{ tplroot }}.config
  - .user

{#- root:root 0755, every one and every directory above it: root runs what they hold. #}
kcm-install-directories:
  kcm_install.directories_owned:
    - name: kcm-install
    - directories: {{ {
        'kcm:paths:install': kcm.paths.install,
        'kcm:paths:install (versions/)': files.versions,
        'kcm:paths:install (versions/' ~ kcm.version ~ '/)': files.version_dir,
        'kcm:paths:install (libexec/)': salt['file.dirname'](files.release_program),
        'kcm:paths:bin': kcm.paths.bin,
        'kcm:paths:conf': kcm.paths.conf,
        'kcm:paths:cache (its parent)': salt['file.dirname'](kcm.paths.cache),
      } | json }}
    {#- where releases before root-owned installs wrote klog files (now LogsDirectory=) #}
    - existing: {{ {'kcm:paths:logs': kcm.paths.logs,
                    'kcm:paths:logs (kube-controller-manager/)': kcm.paths.logs ~ '/kube-controller-manager'} | json }}
    - user: {{ kcm.user | json }}
    - require:
      - kcm_config: kcm-config-validated
{%- if kcm.create_user and kcm.user != 'root' %}
      - user: kcm-install-user
{%- endif %}

kcm-install-cache-directory:
  file.directory:
    - name: {{ kcm.paths.cache | json }}
    - user: root
    - group: root
    - mode: '0700'
    - require:
      - kcm_install: kcm-install-directories

kcm-install-download:
  file.managed:
    - name: {{ files.download | json }}
    - source: {{ kcm.source.url | json }}
    - source_hash: {{ kcm.source.hash | json }}
    - mode: '0644'
    - show_changes: false
    - require:
      - file: kcm-install-cache-directory

kcm-install-binary:
  kcm_install.binary_installed:
    - name: {{ files.version_binary | json }}
    - source: {{ files.download | json }}
    - version: {{ kcm.version | json }}
    - member: {{ (kcm.source.member if kcm.source.type == 'tarball' else '') | json }}
    - user: {{ kcm.user | json }}
    - require:
      - file: kcm-install-download
      - kcm_install: kcm-install-directories

kcm-install-active-link:
  file.symlink:
    - name: {{ files.binary | json }}
    - target: {{ files.version_binary | json }}
    - atomic: true
    - force: true
    - require:
      - kcm_install: kcm-install-binary

{%- if files.link %}

kcm-install-path-link:
  file.symlink:
    - name: {{ files.link | json }}
    - target: {{ files.binary | json }}
    - makedirs: true
    - force: true
    - require:
      - file: kcm-install-active-link
{%- endif %}

kcm-install-prune-versions:
  kcm_install.versions_pruned:
    - name: {{ files.versions | json }}
    - keep: {{ kcm.keep_versions | json }}
    - active: {{ kcm.version | json }}
    - require:
      - file: kcm-install-active-link
