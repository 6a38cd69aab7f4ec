{#- For the Salt master, with pki:mode remote: masters may ask the CA minion to sign their
    KCM certificate (x509.sign_remote_certificate), nothing else. Restart the salt-master
    after the first apply (peer settings are read at start). #}
{%- set conf_dir = salt['config.get']('config_dir', '/etc/salt') %}

kcm-pki-peer-config:
  file.managed:
    - name: {{ (conf_dir ~ '/master.d/kcm-pki-peer.conf') | json }}
    - makedirs: true
    - mode: '0644'
    - contents: |
        # Managed by Salt (kcm-formula, kcm.pki_peer)
        peer:
          '.*':
            - x509.sign_remote_certificate
