// The fleet control plane on Azure: a Python 3.11 Function App on the Flex Consumption plan over a
// serverless Cosmos DB for NoSQL account, wired with its managed identity only (no keys, no
// connection strings to secrets): Cosmos local auth is disabled, storage is reached by identity.
//
//   az deployment group create -g RG -f infra/bicep/main.bicep -p infra/bicep/main.parameters.json
//
// The containers (names, partition keys, indexing policies, composite indexes) come from
// containers.json, the file CosmosStore reads too: one definition for both.

@description('Prefix of every resource name; a short, lower-case word.')
@minLength(3)
@maxLength(11)
param namePrefix string = 'fleet'

@description('Region of every resource.')
param location string = resourceGroup().location

@description('Name of the Cosmos DB SQL database.')
param databaseName string = 'fleet'

@description('FLEET_PREEMPTION: a critical job may evict lower-priority work from a full factory.')
param preemption bool = false

@description('FLEET_BUDGETS: per-product spend ceilings gate claims.')
param budgets bool = false

@description('FLEET_LEASE_SECONDS: how long a claim holds a job without a heartbeat.')
@minValue(30)
param leaseSeconds int = 300

@description('Maximum number of Flex Consumption instances.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory per instance, in MB.')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

@description('Optional: an Entra object id (yours, from `az ad signed-in-user show --query id -o tsv`) to grant Cosmos data access too, e.g. to run the store conformance suite against this account.')
param developerPrincipalId string = ''

@description('Optional: the client (application) id of an Entra ID app registration that declares the Fleet.* app roles (infra/README.md). Given, App Service Authentication signs people in with it and the app runs with FLEET_AUTH=easyauth; empty, FLEET_AUTH=tokens. API tokens work either way.')
param entraClientId string = ''

@description('The Entra ID tenant of that app registration (default: this subscription\'s).')
param entraTenantId string = subscription().tenantId

var easyAuth = !empty(entraClientId)
var suffix = uniqueString(resourceGroup().id, namePrefix)
var functionAppName = '${namePrefix}-${suffix}'
var storageAccountName = take('${namePrefix}${suffix}', 24)
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}'
var containerDefinitions = loadJsonContent('containers.json').containers

// Built-in role definitions.
var cosmosDataContributorRoleId = '00000000-0000-0000-0000-000000000002'
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'

// Monitoring

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${namePrefix}-logs-${suffix}'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${namePrefix}-ai-${suffix}'
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
  }
}

// Storage: the host's own state (timer leases) and the deployment package, by identity only

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageAccountName
  location: location
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    supportsHttpsTrafficOnly: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Cosmos DB: serverless, Entra ID only

resource cosmos 'Microsoft.DocumentDB/databaseAccounts@2024-05-15' = {
  name: '${namePrefix}-cosmos-${suffix}'
  location: location
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    locations: [
      {
        locationName: location
        failoverPriority: 0
        isZoneRedundant: false
      }
    ]
    capabilities: [
      {
        name: 'EnableServerless'
      }
    ]
    consistencyPolicy: {
      defaultConsistencyLevel: 'Session'
    }
    disableLocalAuth: true
    disableKeyBasedMetadataWriteAccess: true
    minimalTlsVersion: 'Tls12'
  }
}

resource database 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-05-15' = {
  parent: cosmos
  name: databaseName
  properties: {
    resource: {
      id: databaseName
    }
  }
}

resource containers 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = [
  for c in containerDefinitions: {
    parent: database
    name: c.name
    properties: {
      resource: {
        id: c.name
        partitionKey: {
          paths: [
            c.partitionKey
          ]
          kind: 'Hash'
          version: 2
        }
        indexingPolicy: union(c.indexingPolicy, {
          compositeIndexes: map(c.compositeIndexes, index => index.paths)
        })
      }
    }
  }
]

// The Function App

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: '${namePrefix}-plan-${suffix}'
  location: location
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      // Flex Consumption derives FUNCTIONS_WORKER_RUNTIME and the extension version from
      // functionAppConfig; setting them here is an error.
      appSettings: [
        {
          // Identity-based host storage: the system-assigned identity, Storage Blob Data Owner.
          name: 'AzureWebJobsStorage__accountName'
          value: storage.name
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsights.properties.ConnectionString
        }
        {
          name: 'FLEET_STORE'
          value: 'cosmos'
        }
        {
          name: 'COSMOS_ENDPOINT'
          value: cosmos.properties.documentEndpoint
        }
        {
          name: 'COSMOS_DATABASE'
          value: databaseName
        }
        {
          name: 'FLEET_PREEMPTION'
          value: preemption ? 'true' : 'false'
        }
        {
          name: 'FLEET_BUDGETS'
          value: budgets ? 'true' : 'false'
        }
        {
          name: 'FLEET_LEASE_SECONDS'
          value: string(leaseSeconds)
        }
        {
          name: 'FLEET_AUTH'
          value: easyAuth ? 'easyauth' : 'tokens'
        }
      ]
    }
  }
  dependsOn: [
    deploymentContainer
  ]
}

// App Service Authentication (Easy Auth) with Entra ID, when an app registration is given.
// Unauthenticated requests pass through to the app (AllowAnonymous), so factories keep calling
// with API tokens and /fleet/health stays anonymous; the app itself refuses any request that
// carries neither a token nor the platform's principal header.

resource easyAuthSettings 'Microsoft.Web/sites/config@2024-04-01' = if (easyAuth) {
  parent: functionApp
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: false
      unauthenticatedClientAction: 'AllowAnonymous'
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: entraClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${entraTenantId}/v2.0'
        }
        validation: {
          allowedAudiences: [
            'api://${entraClientId}'
            entraClientId
          ]
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
  }
}

// Role assignments: data-plane access by identity

resource cosmosDataContributor 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-05-15' = {
  parent: cosmos
  name: guid(cosmos.id, functionApp.id, cosmosDataContributorRoleId)
  properties: {
    roleDefinitionId: '${cosmos.id}/sqlRoleDefinitions/${cosmosDataContributorRoleId}'
    principalId: functionApp.identity.principalId
    scope: cosmos.id
  }
}

resource developerCosmosDataContributor 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-05-15' = if (!empty(developerPrincipalId)) {
  parent: cosmos
  name: guid(cosmos.id, developerPrincipalId, cosmosDataContributorRoleId)
  properties: {
    roleDefinitionId: '${cosmos.id}/sqlRoleDefinitions/${cosmosDataContributorRoleId}'
    principalId: developerPrincipalId
    scope: cosmos.id
  }
}

resource storageBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: storage
  name: guid(storage.id, functionApp.id, storageBlobDataOwnerRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

output functionAppName string = functionApp.name
output functionAppUrl string = 'https://${functionApp.properties.defaultHostName}'
output cosmosEndpoint string = cosmos.properties.documentEndpoint
output cosmosDatabase string = databaseName
output storageAccountName string = storage.name
