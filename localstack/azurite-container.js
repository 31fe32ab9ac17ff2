// Creates a blob container in an Azurite emulator, if it does not exist.
// Usage: node localstack/azurite-container.js <blob endpoint, e.g. http://127.0.0.1:10000/devstoreaccount1> <container>
// Needs the npm package @azure/storage-blob (localstack/install.sh installs it).
const { BlobServiceClient, StorageSharedKeyCredential } = require("@azure/storage-blob");

const [endpoint, container] = process.argv.slice(2);
if (!endpoint || !container) {
  console.error("usage: node azurite-container.js <blob endpoint> <container>");
  process.exit(2);
}
// Azurite's well-known development account (public, documented by Microsoft).
const account = "devstoreaccount1";
const key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const client = new BlobServiceClient(endpoint, new StorageSharedKeyCredential(account, key));
client
  .getContainerClient(container)
  .createIfNotExists()
  .then(() => console.log(`container ${container} ready at ${endpoint}`))
  .catch((e) => {
    console.error(`cannot create container ${container}: ${e.message}`);
    process.exit(1);
  });
