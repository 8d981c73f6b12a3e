"""jdmail's built-in components, registered exactly as a third-party plugin would be."""

from jdmail.directory.ldap import LDAPDirectoryFactory
from jdmail.directory.mysql import MySQLDirectoryFactory
from jdmail.directory.sqlite import SQLiteDirectoryFactory
from jdmail.filters.attachments import AttachmentsFilterFactory
from jdmail.filters.bayes import BayesFilterFactory
from jdmail.filters.clamav import ClamAVFilterFactory
from jdmail.filters.dkim import DKIMFilterFactory
from jdmail.filters.dmarc import DMARCFilterFactory
from jdmail.filters.dnsbl import DNSBLFilterFactory
from jdmail.filters.greylist import GreylistFilterFactory
from jdmail.filters.helo import HeloFilterFactory
from jdmail.filters.spamassassin import SpamAssassinFilterFactory
from jdmail.filters.spf import SPFFilterFactory
from jdmail.store.maildir import MaildirStoreFactory

sqliteDirectory = SQLiteDirectoryFactory()
ldapDirectory = LDAPDirectoryFactory()
mysqlDirectory = MySQLDirectoryFactory()
maildirStore = MaildirStoreFactory()
bayesFilter = BayesFilterFactory()
clamavFilter = ClamAVFilterFactory()
spamassassinFilter = SpamAssassinFilterFactory()
attachmentsFilter = AttachmentsFilterFactory()
dnsblFilter = DNSBLFilterFactory()
heloFilter = HeloFilterFactory()
greylistFilter = GreylistFilterFactory()
spfFilter = SPFFilterFactory()
dkimFilter = DKIMFilterFactory()
dmarcFilter = DMARCFilterFactory()
