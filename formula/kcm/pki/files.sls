{#- PKI files the unit uses, in one of three modes (kcm:pki:mode):
    pillar  every PEM from pillar (validated by kcm-config-validated);
    local   the KCM key is generated here and never leaves the minion; its certificate is
            signed here with the CA from pillar (x509_v2);
    remote  the certificate is signed by the CA minion kcm:pki:ca_server through its
            x509_v2 signing policy (see kcm.ca and kcm.pki_peer).
    Every file root's: certificates 0644; keys 0600, which KCM reads through systemd's
    LoadCredential= copies (kcm_systemd.credentials), or, on a systemd older than 247,
    root:<KCM group> 0640. Never shown in state output, never written through a link.
    A renewed certificate changes the kubeconfig's embedded copy and restarts KCM via watch. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}
{%- set pki = kcm.pki %}
{#- keys: root's alone, or readable by the KCM group where systemd has no credentials #}
{%- set key_group, key_mode = ('root', '0600') if kcm.credentials.mode == 'systemd' else (kcm.group, '0640') %}

include:
  - {{ tplroot }}.config
  - {{ tplroot }}.install

kcm-pki-directory:
  kcm_install.directories_owned:
    - name: kcm-pki
    - directories: {{ {'kcm:paths:pki': kcm.paths.pki} | json }}
    - user: {{ kcm.user | json }}
    - require:
      - kcm_config: kcm-config-validated
      - kcm_install: kcm-install-directories

{#- PEMs taken from pillar in this mode: key -> (file, mode) #}
{%- set from_pillar = [('ca_cert', files.ca_cert, 'root', '0644'),
                       ('service_account_key', files.service_account_key, key_group, key_mode)] %}
{%- if pki.mode == 'pillar' %}
{%-   do from_pillar.extend([('cert', files.cert, 'root', '0644'), ('key', files.key, key_group, key_mode)]) %}
{%- endif %}
{%- if pki.mode != 'remote' or pki.ca_key %}
{%-   do from_pillar.append(('ca_key', files.ca_key, key_group, key_mode)) %}
{%- endif %}
{%- if pki.signer_cert %}
{%-   do from_pillar.extend([('signer_cert', files.signer_cert, 'root', '0644'),
                             ('signer_key', files.signer_key, key_group, key_mode)]) %}
{%- endif %}
{%- for key, path, group, mode in from_pillar %}

kcm-pki-{{ key | replace('_', '-') }}:
  file.managed:
    - name: {{ path | json }}
    - contents_pillar: kcm:pki:{{ key }}
    - user: root
    - group: {{ group | json }}
    - mode: '{{ mode }}'
    - follow_symlinks: false
    - show_changes: false
    - require:
      - kcm_install: kcm-pki-directory
{%- endfor %}

{%- if pki.mode in ('local', 'remote') %}

kcm-pki-key:
  x509.private_key_managed:
    - name: {{ files.key | json }}
    - algo: {{ pki.key_algo | json }}
    - keysize: {{ pki.key_size | json }}
    - user: root
    - group: {{ key_group | json }}
    - mode: '{{ key_mode }}'
    - require:
      - kcm_install: kcm-pki-directory

kcm-pki-cert:
  x509.certificate_managed:
    - name: {{ files.cert | json }}
    - private_key: {{ files.key | json }}
{%-   if pki.mode == 'local' %}
    - signing_cert: {{ files.ca_cert | json }}
    - signing_private_key: {{ files.ca_key | json }}
{%-   else %}
    - ca_server: {{ pki.ca_server | json }}
    - signing_policy: {{ pki.signing_policy | json }}
{%-   endif %}
    - CN: system:kube-controller-manager
    - subjectAltName: {{ salt['kcm_config.cert_sans'](kcm) | json }}
    - basicConstraints: critical, CA:false
    - keyUsage: critical, digitalSignature, keyEncipherment
    - extendedKeyUsage: serverAuth, clientAuth
    - days_valid: {{ pki.days_valid | json }}
    - days_remaining: {{ pki.days_remaining | json }}
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - x509: kcm-pki-key
      - file: kcm-pki-ca-cert
{%-   if pki.mode == 'local' %}
      - file: kcm-pki-ca-key
{%-   endif %}
{%- endif %}
