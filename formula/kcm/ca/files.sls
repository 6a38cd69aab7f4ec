{#- For the CA minion of pki:mode remote (kcm:pki:ca_server): lays down the CA that the
    x509_v2 signing policy signs with. The policy itself lives in this minion's pillar
    (x509_signing_policies, read through config.get, so no minion restart is needed):

      kcm_ca:
        dir: /etc/pki/kcm-ca
        ca_cert: |
          -----BEGIN CERTIFICATE----- ...
        ca_key: |
          -----BEGIN PRIVATE KEY----- ...
      x509_signing_policies:
        kcm:
          - minions: 'master*'
          - signing_cert: /etc/pki/kcm-ca/ca.pem
          - signing_private_key: /etc/pki/kcm-ca/ca-key.pem
          - CN: system:kube-controller-manager
          - basicConstraints: critical, CA:false
          - keyUsage: critical, digitalSignature, keyEncipherment
          - extendedKeyUsage: serverAuth, clientAuth
          - days_valid: 365

    The master must let masters ask the CA minion to sign: see kcm.pki_peer. #}
{%- set ca = salt['pillar.get']('kcm_ca', {}) %}
{%- set ca_dir = ca.get('dir', '/etc/pki/kcm-ca') %}

kcm-ca-directory:
  file.directory:
    - name: {{ ca_dir | json }}
    - mode: '0700'
    - makedirs: true

kcm-ca-cert:
  file.managed:
    - name: {{ (ca_dir ~ '/ca.pem') | json }}
    - contents_pillar: kcm_ca:ca_cert
    - mode: '0644'
    - require:
      - file: kcm-ca-directory

kcm-ca-key:
  file.managed:
    - name: {{ (ca_dir ~ '/ca-key.pem') | json }}
    - contents_pillar: kcm_ca:ca_key
    - mode: '0600'
    - show_changes: false
    - require:
      - file: kcm-ca-directory
