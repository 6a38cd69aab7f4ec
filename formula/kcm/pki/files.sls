{#- PKI files the unit uses, in one of three modes (kcm:pki:mode):
    pillar  every PEM from pillar (validated by kcm-config-validated);
    local   the KCM key is generated here and never leaves the minion; its certificate is
            signed here with the CA from pillar (x509_v2);
    remote  the certificate is signed by the CA minion kcm:pki:ca_server through its
            x509_v2 signing policy (see kcm.ca and kcm.pki_peer).
    Keys 0600, certificates 0644, owned by the KCM user, never shown in state output.
    A renewed certificate changes the kubeconfig's embedded copy and restarts KCM via watch. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}
{%- set pki = kcm.pki %}
{%- set owner = {'user': kcm.user, 'group': kcm.group} %}

include:
  - {{ tplroot }}.config
  - {{ tplroot }}.install

kcm-pki-directory:
  file.directory:
    - name: {{ kcm.paths.pki | json }}
    - user: {{ kcm.user | json }}
    - group: {{ kcm.group | json }}
    - mode: '0755'
    - makedirs: true
    - require:
      - kcm_config: kcm-config-validated
      - file: kcm-install-directories

{#- PEMs taken from pillar in this mode: key -> (file, mode) #}
{%- set from_pillar = [('ca_cert', files.ca_cert, '0644'), ('service_account_key', files.service_account_key, '0600')] %}
{%- if pki.mode == 'pillar' %}
{%-   do from_pillar.extend([('cert', files.cert, '0644'), ('key', files.key, '0600')]) %}
{%- endif %}
{%- if pki.mode != 'remote' or pki.ca_key %}
{%-   do from_pillar.append(('ca_key', files.ca_key, '0600')) %}
{%- endif %}
{%- if pki.signer_cert %}
{%-   do from_pillar.extend([('signer_cert', files.signer_cert, '0644'), ('signer_key', files.signer_key, '0600')]) %}
{%- endif %}
{%- for key, path, mode in from_pillar %}

kcm-pki-{{ key | replace('_', '-') }}:
  file.managed:
    - name: {{ path | json }}
    - contents_pillar: kcm:pki:{{ key }}
    - user: {{ kcm.user | json }}
    - group: {{ kcm.group | json }}
    - mode: '{{ mode }}'
    - show_changes: false
    - require:
      - file: kcm-pki-directory
{%- endfor %}

{%- if pki.mode in ('local', 'remote') %}

kcm-pki-key:
  x509.private_key_managed:
    - name: {{ files.key | json }}
    - algo: {{ pki.key_algo | json }}
    - keysize: {{ pki.key_size | json }}
    - user: {{ kcm.user | json }}
    - group: {{ kcm.group | json }}
    - mode: '0600'
    - require:
      - file: kcm-pki-directory

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
    - user: {{ kcm.user | json }}
    - group: {{ kcm.group | json }}
    - mode: '0644'
    - require:
      - x509: kcm-pki-key
      - file: kcm-pki-ca-cert
{%-   if pki.mode == 'local' %}
      - file: kcm-pki-ca-key
{%-   endif %}
{%- endif %}
